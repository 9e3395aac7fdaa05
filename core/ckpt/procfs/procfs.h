// roam::ckpt_procfs: readers and parsers of the /proc/PID files that
// checkpointing needs: maps, pagemap, status, stat, fds and fdinfo, threads,
// children, auxv, links, comm, personality and namespaces.
//
// Every parser is a pure function of the file's text, so it is tested with
// literal fixtures; each Read*/List* function opens the real file for a pid
// and calls the parser. Errors: a pid with no process is Errc::kNotFound
// ("no process 12345"), a process the caller may not inspect is
// Errc::kPermissionDenied, text that does not parse is Errc::kCorrupt.
//
// Thread-safety: all functions are safe from any thread (see each header;
// PagemapReader documents its own contract). What they return is a
// snapshot, only stable while the target is frozen.
//
// Private to core/ckpt: include as "core/ckpt/procfs/procfs.h", or one of
// the headers below for just one concept.
#pragma once

#include "core/ckpt/procfs/fds.h"      // IWYU pragma: export
#include "core/ckpt/procfs/maps.h"     // IWYU pragma: export
#include "core/ckpt/procfs/pagemap.h"  // IWYU pragma: export
#include "core/ckpt/procfs/process.h"  // IWYU pragma: export
#include "core/ckpt/procfs/stat.h"     // IWYU pragma: export
#include "core/ckpt/procfs/status.h"   // IWYU pragma: export
