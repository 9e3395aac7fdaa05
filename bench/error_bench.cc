// Cost of roam's error type on hot paths. Baseline in the same run: a plain
// int return code. Prints JSON with --benchmark_format=json.
#include <benchmark/benchmark.h>

#include "roam/base/error.h"
#include "roam/base/error_wire.h"

namespace {

[[gnu::noinline]] int PlainCode(int x) { return x < 0 ? -1 : x + 1; }

[[gnu::noinline]] roam::Result<int> ResultOf(int x) {
  if (x < 0) return roam::MakeError(roam::Errc::kInvalidArgument, "negative value {}", x);
  return x + 1;
}

void BM_PlainIntSuccess(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    benchmark::DoNotOptimize(PlainCode(x));
  }
}
BENCHMARK(BM_PlainIntSuccess);

void BM_ResultSuccess(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    auto r = ResultOf(x);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_ResultSuccess);

void BM_ResultError(benchmark::State& state) {
  int x = -1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    auto r = ResultOf(x);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_ResultError);

void BM_WireRoundTrip(benchmark::State& state) {
  const roam::Error error(roam::Errc::kNotMigratable, "pid 4242 holds a socket (fd 3)");
  for (auto _ : state) {
    auto decoded = roam::DecodeError(roam::EncodeError(error));
    benchmark::DoNotOptimize(decoded);
  }
}
BENCHMARK(BM_WireRoundTrip);

}  // namespace

BENCHMARK_MAIN();
