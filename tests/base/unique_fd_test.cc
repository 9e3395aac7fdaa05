#include "roam/base/unique_fd.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace roam {
namespace {

bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

TEST(UniqueFdTest, ClosesWhenItGoesAndMovesOwnership) {
  int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw, 0);
  {
    UniqueFd a(raw);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): moved-from state is defined
    EXPECT_EQ(b.get(), raw);
    UniqueFd c;
    c = std::move(b);
    EXPECT_TRUE(IsOpen(raw));
  }
  EXPECT_FALSE(IsOpen(raw));
}

TEST(UniqueFdTest, CloseReportsTheErrorWithThePath) {
  int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw, 0);
  UniqueFd fd(raw);
  EXPECT_TRUE(fd.Close("/dev/null").has_value());
  EXPECT_FALSE(fd.valid());
  Status again = fd.Close("/dev/null");
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().sys_errno(), EBADF);
  EXPECT_NE(again.error().message().find("/dev/null"), std::string::npos);
  fd.reset();  // harmless when closed
}

}  // namespace
}  // namespace roam
