// Anonymous memory mapped and faulted in at once, for regions that must not
// fault later (staging, send rings): each page touched once, in one call
// (MADV_POPULATE_WRITE; on kernels before 5.14, a write to every page).
// Fresh anonymous memory is zero-filled by the kernel, so no memset.
//
// Thread-safety: pure function.
#pragma once

#include <cstddef>

#include "roam/base/error.h"

namespace roam {

// `bytes` (a multiple of the page size) of private anonymous memory,
// faulted in; the caller munmaps it. `what` names it in errors.
Result<void*> MapFaultedIn(std::size_t bytes, const char* what);

}  // namespace roam
