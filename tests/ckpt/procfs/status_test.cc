#include "core/ckpt/procfs/status.h"

#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "core/ckpt/procfs/stat.h"

namespace roam::ckpt::procfs {
namespace {

// /proc/PID/status of a shell on the development machine (abridged: the
// memory and CPU lines carry nothing this parser reads).
constexpr std::string_view kRealStatus =
    "Name:\tbash\n"
    "Umask:\t0022\n"
    "State:\tS (sleeping)\n"
    "Tgid:\t10572\n"
    "Ngid:\t0\n"
    "Pid:\t10572\n"
    "PPid:\t10568\n"
    "TracerPid:\t0\n"
    "Uid:\t1000\t1000\t1000\t1000\n"
    "Gid:\t1000\t1000\t1000\t1000\n"
    "FDSize:\t256\n"
    "Groups:\t4 24 27 1000 \n"
    "NStgid:\t10572\t1\n"
    "NSpid:\t10572\t1\n"
    "VmRSS:\t    1736 kB\n"
    "Threads:\t1\n"
    "SigQ:\t0/96365\n"
    "SigPnd:\t0000000000000000\n"
    "ShdPnd:\t0000000000000100\n"
    "SigBlk:\t0000000000010000\n"
    "SigIgn:\t0000000000380004\n"
    "SigCgt:\t000000004b817efb\n"
    "CapInh:\t0000000000000000\n"
    "CapPrm:\t0000000000000000\n"
    "CapEff:\t0000000000000000\n"
    "CapBnd:\t000001ffffffffff\n"
    "CapAmb:\t0000000000000000\n"
    "NoNewPrivs:\t1\n"
    "Seccomp:\t2\n"
    "Seccomp_filters:\t3\n"
    "Speculation_Store_Bypass:\tvulnerable\n"
    "Cpus_allowed_list:\t0-1\n";

std::string Without(std::string_view text, std::string_view key) {
  std::string out(text);
  const size_t at = out.find(std::string(key) + ":");
  if (at != std::string::npos) out.erase(at, out.find('\n', at) - at + 1);
  return out;
}

TEST(StatusTest, ParsesRealStatus) {
  auto s = ParseStatus(kRealStatus);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(s->name, "bash");
  EXPECT_EQ(s->umask, 022u);
  EXPECT_EQ(s->state, 'S');
  EXPECT_EQ(s->tgid, 10572);
  EXPECT_EQ(s->pid, 10572);
  EXPECT_EQ(s->ppid, 10568);
  EXPECT_EQ(s->tracer_pid, 0);
  EXPECT_EQ(s->uid, (std::array<uint32_t, 4>{1000, 1000, 1000, 1000}));
  EXPECT_EQ(s->gid[3], 1000u);
  EXPECT_EQ(s->groups, (std::vector<uint32_t>{4, 24, 27, 1000}));
  EXPECT_EQ(s->threads, 1);
  EXPECT_EQ(s->sig_pending, 0u);
  EXPECT_EQ(s->shd_pending, 0x100u);
  EXPECT_EQ(s->blocked, 0x10000u);
  EXPECT_EQ(s->ignored, 0x380004u);
  EXPECT_EQ(s->caught, 0x4b817efbu);
  EXPECT_EQ(s->cap_bnd, 0x1ffffffffffu);
  EXPECT_TRUE(s->no_new_privs);
  EXPECT_EQ(s->seccomp, 2);
  EXPECT_EQ(s->seccomp_filters, 3);
  EXPECT_EQ(s->ns_pid, (std::vector<pid_t>{10572, 1}));
}

TEST(StatusTest, OptionalKeysMayBeMissingAndGroupsEmpty) {
  std::string text = Without(Without(kRealStatus, "Seccomp_filters"), "Groups");
  text += "Groups:\t \nName:\t my task \n";  // a later Name wins; its spaces are the comm's
  auto s = ParseStatus(text);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(s->seccomp_filters, 0);
  EXPECT_TRUE(s->groups.empty());
  EXPECT_EQ(s->name, " my task ");
}

TEST(StatusTest, MissingRequiredKeyIsCorrupt) {
  for (const std::string_view key : {"Name", "Pid", "Uid", "Gid", "Threads"}) {
    auto s = ParseStatus(Without(kRealStatus, key));
    ASSERT_FALSE(s.has_value()) << key;
    EXPECT_EQ(s.error().code(), Errc::kCorrupt);
    EXPECT_NE(s.error().message().find(key), std::string::npos) << s.error().ToString();
  }
}

TEST(StatusTest, BadLinesAreCorrupt) {
  for (const std::string_view bad :
       {"garbage without a colon\n", "Uid:\t0\t0\t0\n", "SigBlk:\tnothex\n", "Pid:\t-\n"}) {
    auto s = ParseStatus(std::string(kRealStatus) + std::string(bad));
    ASSERT_FALSE(s.has_value()) << bad;
    EXPECT_EQ(s.error().code(), Errc::kCorrupt);
    EXPECT_NE(s.error().message().find("line 33"), std::string::npos) << s.error().ToString();
  }
}

TEST(StatusTest, ReadStatusOfThisProcess) {
  auto s = ReadStatus(getpid());
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(s->pid, getpid());
  EXPECT_EQ(s->tgid, getpid());
  EXPECT_EQ(s->ppid, getppid());
  EXPECT_EQ(s->uid[0], getuid());
  EXPECT_EQ(s->gid[1], getegid());
  EXPECT_GE(s->threads, 1);
  EXPECT_EQ(s->state, 'R');
  ASSERT_FALSE(s->ns_pid.empty());
}

// /proc/PID/stat of sleep(1) on the development machine.
constexpr std::string_view kRealStat =
    "12039 (sleep) S 12035 12035 8659 0 -1 4194304 132 0 1 0 0 0 0 0 20 0 1 0 275414 2990080 408 "
    "18446744073709551615 94794386538496 94794386556425 140720471229712 0 0 0 0 6 0 1 0 0 17 0 0 "
    "0 0 0 0 94794386570512 94794386571776 94795141332992 140720471231109 140720471231118 "
    "140720471231118 140720471232489 0\n";

TEST(StatTest, ParsesRealStat) {
  auto s = ParseStat(kRealStat);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(s->pid, 12039);
  EXPECT_EQ(s->comm, "sleep");
  EXPECT_EQ(s->state, 'S');
  EXPECT_EQ(s->ppid, 12035);
  EXPECT_EQ(s->pgrp, 12035);
  EXPECT_EQ(s->session, 8659);
  EXPECT_EQ(s->tty_nr, 0);
  EXPECT_EQ(s->num_threads, 1);
  EXPECT_EQ(s->starttime, 275414u);
  EXPECT_EQ(s->start_code, 94794386538496u);
  EXPECT_EQ(s->end_code, 94794386556425u);
  EXPECT_EQ(s->start_stack, 140720471229712u);
  EXPECT_EQ(s->start_data, 94794386570512u);
  EXPECT_EQ(s->end_data, 94794386571776u);
  EXPECT_EQ(s->start_brk, 94795141332992u);
  EXPECT_EQ(s->arg_start, 140720471231109u);
  EXPECT_EQ(s->arg_end, 140720471231118u);
  EXPECT_EQ(s->env_start, 140720471231118u);
  EXPECT_EQ(s->env_end, 140720471232489u);
}

TEST(StatTest, CommMayHoldSpacesAndParentheses) {
  std::string text(kRealStat);
  text.replace(text.find("(sleep)"), 7, "(a) (b c)");
  auto s = ParseStat(text);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(s->comm, "a) (b c");
  EXPECT_EQ(s->state, 'S');
  EXPECT_EQ(s->env_end, 140720471232489u);
}

TEST(StatTest, TruncatedOrGarbledStatIsCorrupt) {
  const std::string real(kRealStat);
  std::string bad_ppid = real;
  bad_ppid.replace(bad_ppid.find("12035"), 5, "x");
  for (const std::string& bad : {std::string("12039 sleep S 1"), real.substr(0, 200), bad_ppid}) {
    auto s = ParseStat(bad);
    ASSERT_FALSE(s.has_value()) << bad;
    EXPECT_EQ(s.error().code(), Errc::kCorrupt);
  }
}

TEST(StatTest, ReadStatOfThisProcess) {
  auto s = ReadStat(getpid());
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(s->pid, getpid());
  EXPECT_EQ(s->ppid, getppid());
  EXPECT_EQ(s->pgrp, getpgrp());
  EXPECT_GE(s->num_threads, 1);
  EXPECT_LT(s->start_code, s->end_code);
  EXPECT_LT(s->arg_start, s->arg_end);
  EXPECT_LE(s->env_start, s->env_end);
  EXPECT_NE(s->start_stack, 0u);
}

}  // namespace
}  // namespace roam::ckpt::procfs
