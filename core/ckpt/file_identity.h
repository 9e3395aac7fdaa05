// The identity of a file a process maps or has open (inode, size, mtime,
// ELF build-id), recorded at capture and compared at restore so a process is
// never rebuilt on top of a different binary or library with the same path.
// st_dev is left out: it differs between clients of one shared file system.
//
// Thread-safety: free functions; safe from any thread.
#pragma once

#include <string>

#include "core/ckpt/image/image.pb.h"
#include "roam/base/error.h"

namespace roam::ckpt {

Result<image::FileIdentity> IdentifyFile(const std::string& path);

// The NT_GNU_BUILD_ID note of an ELF file; empty if it is not ELF or has none.
std::string ReadBuildId(int fd);

// Ok if the file at identity.path is the same file; kIncompatible naming
// what differs otherwise.
Status CheckFileIdentity(const image::FileIdentity& identity);

}  // namespace roam::ckpt
