#include "launch/daemon/balancer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace roam::daemon {
namespace {

TEST(BalancerTest, ModesParseAndAnUnknownOneIsNamed) {
  for (BalanceMode mode : {BalanceMode::kOff, BalanceMode::kExec, BalanceMode::kMosix}) {
    const auto parsed = ParseBalanceMode(BalanceModeName(mode));
    ASSERT_TRUE(parsed) << parsed.error().ToString();
    EXPECT_EQ(*parsed, mode);
  }
  const auto bad = ParseBalanceMode("sprite");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(bad.error().message().find("'sprite'"), std::string::npos);
}

// A child that spins is runnable; one that sleeps is not; a gone one is 0.
TEST(BalancerTest, RunnableTasksCountsThreadsInStateR) {
  const pid_t spinner = fork();
  if (spinner == 0) {
    for (;;) {
    }
  }
  const pid_t sleeper = fork();
  if (sleeper == 0) {
    pause();
    _exit(0);
  }
  // The spinner is R whenever it is read (running or waiting for a CPU).
  int runnable = 0;
  for (int i = 0; i < 50 && runnable == 0; ++i) {
    runnable = RunnableTasks(spinner);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(runnable, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(RunnableTasks(sleeper), 0);
  EXPECT_GT(ResidentBytes(sleeper), 0u);
  for (pid_t pid : {spinner, sleeper}) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  EXPECT_EQ(RunnableTasks(spinner), 0);
  EXPECT_EQ(ResidentBytes(spinner), 0u);
}

}  // namespace
}  // namespace roam::daemon
