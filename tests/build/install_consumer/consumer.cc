// A program outside roam that uses the installed libroam, as a user would:
// two nodes of the in-process transport, one put from a to b's memory, then
// a flush. Built by install_test.sh against an installed prefix, once with
// pkg-config and once with find_package(roam). Prints "roam <version> ok".
#include <roam/base/error.h>
#include <roam/base/version.h>
#include <roam/transport/fake.h>
#include <roam/transport/transport.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>

namespace {

int Fail(const char* what, const roam::Error& error) {
  std::fprintf(stderr, "%s: %s\n", what, error.ToString().c_str());
  return 1;
}

}  // namespace

int main() {
  using namespace roam::transport;
  FakeNetwork network;
  FabricOptions options;
  options.name = "a";
  auto a = network.AddNode(options);
  options.name = "b";
  auto b = network.AddNode(options);
  if (!a) return Fail("AddNode a", a.error());
  if (!b) return Fail("AddNode b", b.error());

  auto address = (*b)->Address();
  if (!address) return Fail("Address", address.error());
  auto endpoint = (*a)->Connect(*address);
  if (!endpoint) return Fail("Connect", endpoint.error());
  auto region = (*b)->Allocate(4096);
  if (!region) return Fail("Allocate", region.error());
  auto packed = (*region)->PackKey();
  if (!packed) return Fail("PackKey", packed.error());
  auto key = (*endpoint)->UnpackKey(*packed);
  if (!key) return Fail("UnpackKey", key.error());

  const char text[] = "installed";
  const auto* bytes = reinterpret_cast<const std::byte*>(text);
  if (auto put = (*endpoint)->Put(ByteView(bytes, sizeof text), (*key)->base(), **key); !put) {
    return Fail("Put", put.error());
  }
  bool flushed = false;
  if (auto flush = (*endpoint)->Flush([&](roam::Status) { flushed = true; }); !flush) {
    return Fail("Flush", flush.error());
  }
  Fabric* fabrics[] = {a->get(), b->get()};
  if (auto done = ProgressUntil(
          fabrics, [&] { return flushed; }, std::chrono::seconds(10));
      !done) {
    return Fail("ProgressUntil", done.error());
  }
  if (std::memcmp((*region)->data(), text, sizeof text) != 0) {
    std::fprintf(stderr, "the put did not land in b's memory\n");
    return 1;
  }
  std::printf("roam %s ok\n", ROAM_VERSION_STRING);
  return 0;
}
