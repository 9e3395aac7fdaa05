// Compiled by tests/build: without ROAM_USE_RESULT it drops a Result, which
// must not compile under -Werror.
#include "roam/base/error.h"

roam::Result<int> Parse() { return 1; }

int main() {
#ifdef ROAM_USE_RESULT
  return Parse().value() - 1;
#else
  Parse();
  return 0;
#endif
}
