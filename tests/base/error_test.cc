#include "roam/base/error.h"

#include <cerrno>
#include <set>
#include <string>

#include <gtest/gtest.h>

namespace roam {
namespace {

TEST(ErrcTest, EveryCodeHasAUniqueNameThatRoundTrips) {
  std::set<std::string_view> names;
  for (auto v = static_cast<std::uint32_t>(kFirstErrc); v <= static_cast<std::uint32_t>(kLastErrc);
       ++v) {
    const auto code = ErrcFromValue(v);
    ASSERT_TRUE(code.has_value()) << v;
    const std::string_view name = ErrcName(*code);
    EXPECT_NE(name, "unknown") << v;
    EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
    EXPECT_EQ(ErrcFromName(name), code);
  }
}

TEST(ErrcTest, UnknownValuesAndNamesAreRejected) {
  EXPECT_FALSE(ErrcFromValue(0).has_value());
  EXPECT_FALSE(ErrcFromValue(static_cast<std::uint32_t>(kLastErrc) + 1).has_value());
  EXPECT_FALSE(ErrcFromName("no-such-code").has_value());
  EXPECT_EQ(ErrcName(static_cast<Errc>(999)), "unknown");
}

TEST(ErrcTest, NumbersAreStable) {
  // These numbers are on the wire; changing one breaks mixed-version pools.
  EXPECT_EQ(static_cast<int>(Errc::kInvalidArgument), 1);
  EXPECT_EQ(static_cast<int>(Errc::kNotMigratable), 9);
  EXPECT_EQ(static_cast<int>(Errc::kInternal), 15);
}

TEST(ErrorTest, ToStringNamesTheCodeAndMessage) {
  const Error e = MakeError(Errc::kNotMigratable, "pid {} holds a socket (fd {})", 42, 3);
  EXPECT_EQ(e.code(), Errc::kNotMigratable);
  EXPECT_EQ(e.sys_errno(), 0);
  EXPECT_EQ(e.message(), "pid 42 holds a socket (fd 3)");
  EXPECT_EQ(e.ToString(), "not-migratable: pid 42 holds a socket (fd 3)");
}

TEST(ErrorTest, MessageIsAlwaysOneLine) {
  const Error e(Errc::kCorrupt, "bad\nimage\r\theader\x7f!");
  EXPECT_EQ(e.message(), "bad image  header !");
  EXPECT_EQ(e.ToString().find('\n'), std::string::npos);
  const Error with_context = e.WithContext("line1\nline2");
  EXPECT_EQ(with_context.message(), "line1 line2: bad image  header !");
}

TEST(ErrorTest, ErrnoErrorMapsTheCodeAndKeepsTheErrno) {
  const Error e = ErrnoError(ENOENT, "open {}", "/etc/roam/key");
  EXPECT_EQ(e.code(), Errc::kNotFound);
  EXPECT_EQ(e.sys_errno(), ENOENT);
  EXPECT_EQ(e.ToString(), "not-found: open /etc/roam/key: No such file or directory (ENOENT)");
}

TEST(ErrorTest, UnknownErrnoIsPrintedAsANumber) {
  EXPECT_EQ(Error(Errc::kIo, 9999, "read").ToString(), "io: read: errno 9999");
}

TEST(ErrorTest, ErrcFromErrnoCoversTheCommonCases) {
  EXPECT_EQ(ErrcFromErrno(EINVAL), Errc::kInvalidArgument);
  EXPECT_EQ(ErrcFromErrno(ESRCH), Errc::kNotFound);
  EXPECT_EQ(ErrcFromErrno(EEXIST), Errc::kAlreadyExists);
  EXPECT_EQ(ErrcFromErrno(EPERM), Errc::kPermissionDenied);
  EXPECT_EQ(ErrcFromErrno(EACCES), Errc::kPermissionDenied);
  EXPECT_EQ(ErrcFromErrno(ECONNREFUSED), Errc::kUnavailable);
  EXPECT_EQ(ErrcFromErrno(ETIMEDOUT), Errc::kTimeout);
  EXPECT_EQ(ErrcFromErrno(ENOMEM), Errc::kResourceExhausted);
  EXPECT_EQ(ErrcFromErrno(ENOSYS), Errc::kUnsupported);
  EXPECT_EQ(ErrcFromErrno(EIO), Errc::kIo);
}

TEST(ErrorTest, WithContextPrependsAndKeepsCodeAndErrno) {
  const Error base = ErrnoError(EACCES, "open /proc/1/mem");
  const Error copied = base.WithContext("capture pid 1");
  EXPECT_EQ(copied.code(), Errc::kPermissionDenied);
  EXPECT_EQ(copied.sys_errno(), EACCES);
  EXPECT_EQ(copied.message(), "capture pid 1: open /proc/1/mem");
  EXPECT_EQ(base.message(), "open /proc/1/mem");  // the lvalue is untouched
  Error moved = Error(base).WithContext("migrate to n2");
  EXPECT_EQ(moved.message(), "migrate to n2: open /proc/1/mem");
}

Result<int> ParsePositive(int x) {
  if (x <= 0) return MakeError(Errc::kInvalidArgument, "{} is not positive", x);
  return x;
}

Result<int> DoubleOfPositive(int x) {
  ROAM_ASSIGN_OR_RETURN(const int value, ParsePositive(x));
  return 2 * value;
}

Status CheckBoth(int a, int b) {
  ROAM_TRY(ParsePositive(a));
  ROAM_TRY(ParsePositive(b));
  return Ok();
}

TEST(ResultTest, HoldsAValueOrAnError) {
  const Result<int> good = ParsePositive(3);
  ASSERT_TRUE(good.has_value());
  EXPECT_EQ(*good, 3);
  const Result<int> bad = ParsePositive(-1);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().ToString(), "invalid-argument: -1 is not positive");
}

TEST(ResultTest, AssignOrReturnPropagatesTheFirstError) {
  EXPECT_EQ(DoubleOfPositive(4).value(), 8);
  const auto r = DoubleOfPositive(0);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().message(), "0 is not positive");
}

TEST(ResultTest, TryPropagatesFromStatusFunctions) {
  EXPECT_TRUE(CheckBoth(1, 2).has_value());
  const Status s = CheckBoth(1, -7);
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().message(), "-7 is not positive");
}

TEST(ResultTest, MonadicOperationsComeFromExpected) {
  const Result<int> r = ParsePositive(5).and_then(DoubleOfPositive);
  EXPECT_EQ(r.value(), 10);
  const Result<int> e = ParsePositive(-5).and_then(DoubleOfPositive);
  EXPECT_EQ(e.error().message(), "-5 is not positive");
}

TEST(ResultTest, MoveOnlyValues) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.has_value());
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 7);
}

}  // namespace
}  // namespace roam
