// One rank of the PMIx bootstrap test (pmix_bootstrap_test.cc runs it under
// mpirun): checks the bootstrap.h contract over the launcher's PMIx and
// prints "rank R of N ok", or one line per thing that was wrong and exits 1.
#include <cstdio>
#include <string>

#include "roam/transport/bootstrap.h"

namespace {

int failures = 0;

void Fail(const std::string& what) {
  std::fprintf(stderr, "%s\n", what.c_str());
  ++failures;
}

std::string Text(const std::vector<std::byte>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

std::span<const std::byte> Bytes(const std::string& text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

}  // namespace

int main() {
  using roam::Errc;
  auto opened = roam::transport::OpenPmixBootstrap();
  if (!opened) {
    std::fprintf(stderr, "open: %s\n", opened.error().ToString().c_str());
    return 1;
  }
  auto& boot = **opened;
  const int rank = boot.rank();
  const int size = boot.size();
  const auto tag = [rank](const std::string& what) {
    return "rank " + std::to_string(rank) + ": " + what;
  };
  const auto value = [](const char* round, int r) {
    return std::string(round) + " of " + std::to_string(r);
  };
  // Fences, then checks that every rank's value is the one of `round`;
  // false if the fence failed.
  const auto fence_and_check = [&](const char* round) {
    if (auto fenced = boot.Fence(std::chrono::seconds(30)); !fenced) {
      Fail(tag(std::string("fence of the ") + round + " round: " + fenced.error().ToString()));
      return false;
    }
    for (int r = 0; r < size; ++r) {
      auto got = boot.Get(r, "roam.test.value");
      if (!got || Text(*got) != value(round, r)) {
        Fail(tag(std::string(round) + " round, rank " + std::to_string(r) + ": " +
                 (got ? "'" + Text(*got) + "'" : got.error().ToString())));
      }
    }
    return true;
  };

  if (!boot.Put("roam.test.value", Bytes(value("first", rank)))) Fail(tag("put"));
  if (auto early = boot.Get(rank, "roam.test.value");
      early || early.error().code() != Errc::kNotFound) {
    Fail(tag("a Get before any Fence answered"));
  }
  if (!fence_and_check("first")) return 1;
  if (auto missing = boot.Get((rank + 1) % size, "roam.test.never-put");
      missing || missing.error().code() != Errc::kNotFound) {
    Fail(tag("a key nobody put was not kNotFound"));
  }
  if (auto outside = boot.Get(size, "roam.test.value");
      outside || outside.error().code() != Errc::kInvalidArgument) {
    Fail(tag("a rank outside the job was not kInvalidArgument"));
  }

  // A second round overwrites; until it completes, Get answers the first.
  if (!boot.Put("roam.test.value", Bytes(value("second", rank)))) Fail(tag("put 2"));
  if (auto own = boot.Get(rank, "roam.test.value"); !own || Text(*own) != value("first", rank)) {
    Fail(tag("its own Get between Put and Fence did not answer the last fence's value"));
  }
  if (!fence_and_check("second")) return 1;
  if (failures == 0) {
    std::printf("rank %d of %d ok (local %d of %d on '%s')\n", rank, size, boot.local_rank(),
                boot.local_size(), boot.hostname().c_str());
  }
  return failures == 0 ? 0 : 1;
}
