# Every dependency comes from Debian's packages (scripts/setup installs them).
# A missing required one stops configure with a message naming the package.

set(ROAM_DEPENDENCY_REPORT "")

function(roam_dependency_missing what debian_package)
  message(FATAL_ERROR
    "roam: required dependency ${what} was not found; "
    "install the Debian package '${debian_package}' (./scripts/setup installs everything)")
endfunction()

function(roam_report_dependency what version)
  set(ROAM_DEPENDENCY_REPORT "${ROAM_DEPENDENCY_REPORT};${what}=${version}" PARENT_SCOPE)
endfunction()

find_package(PkgConfig QUIET)
if(NOT PkgConfig_FOUND)
  roam_dependency_missing("pkg-config" "pkg-config")
endif()

# --- Required -----------------------------------------------------------
find_package(ucx CONFIG QUIET)
if(NOT ucx_FOUND)
  roam_dependency_missing("UCX (ucp, uct, ucs)" "libucx-dev")
endif()
roam_report_dependency("UCX" "${ucx_VERSION}")

pkg_check_modules(HWLOC QUIET IMPORTED_TARGET hwloc>=2.0)
if(NOT HWLOC_FOUND)
  roam_dependency_missing("hwloc >= 2.0" "libhwloc-dev")
endif()
roam_report_dependency("hwloc" "${HWLOC_VERSION}")

pkg_check_modules(PMIX QUIET IMPORTED_TARGET pmix>=4)
if(NOT PMIX_FOUND)
  roam_dependency_missing("PMIx >= 4" "libpmix-dev")
endif()
roam_report_dependency("PMIx" "${PMIX_VERSION}")

find_package(Protobuf QUIET)
if(NOT Protobuf_FOUND OR NOT Protobuf_PROTOC_EXECUTABLE)
  roam_dependency_missing("protobuf (library and protoc)" "libprotobuf-dev protobuf-compiler")
endif()
roam_report_dependency("protobuf" "${Protobuf_VERSION}")

# FlatBuffers structs: fixed-size, little-endian records that peers write
# into each other's memory and that are read in place (load vectors).
find_package(FlatBuffers CONFIG QUIET)
find_program(ROAM_FLATC flatc)
if(NOT FlatBuffers_FOUND OR NOT ROAM_FLATC)
  roam_dependency_missing("FlatBuffers (library and flatc)" "libflatbuffers-dev flatbuffers-compiler")
endif()
roam_report_dependency("FlatBuffers" "${FlatBuffers_VERSION}")

pkg_check_modules(XXHASH QUIET IMPORTED_TARGET libxxhash>=0.8)
if(NOT XXHASH_FOUND)
  roam_dependency_missing("xxHash >= 0.8" "libxxhash-dev")
endif()
roam_report_dependency("xxHash" "${XXHASH_VERSION}")

# OpenSSL 3's libcrypto: HMAC-SHA256 of the messages between daemons
# (launch/pool/envelope.cc).
find_package(OpenSSL 3 QUIET COMPONENTS Crypto)
if(NOT OpenSSL_FOUND OR NOT TARGET OpenSSL::Crypto)
  roam_dependency_missing("OpenSSL >= 3 (libcrypto)" "libssl-dev")
endif()
roam_report_dependency("OpenSSL" "${OPENSSL_VERSION}")

find_package(tl-expected CONFIG QUIET)
if(NOT tl-expected_FOUND)
  roam_dependency_missing("tl::expected" "libexpected-dev")
endif()
roam_report_dependency("tl-expected" "${tl-expected_VERSION}")

find_package(fmt CONFIG QUIET)
if(NOT fmt_FOUND)
  roam_dependency_missing("fmt" "libfmt-dev")
endif()
roam_report_dependency("fmt" "${fmt_VERSION}")

find_package(spdlog CONFIG QUIET)
if(NOT spdlog_FOUND)
  roam_dependency_missing("spdlog" "libspdlog-dev")
endif()
roam_report_dependency("spdlog" "${spdlog_VERSION}")

find_package(CLI11 CONFIG QUIET)
if(NOT CLI11_FOUND)
  roam_dependency_missing("CLI11" "libcli11-dev")
endif()
roam_report_dependency("CLI11" "${CLI11_VERSION}")

find_package(nlohmann_json 3.2 CONFIG QUIET)
if(NOT nlohmann_json_FOUND)
  roam_dependency_missing("nlohmann-json >= 3.2" "nlohmann-json3-dev")
endif()
roam_report_dependency("nlohmann-json" "${nlohmann_json_VERSION}")

if(ROAM_BUILD_TESTS)
  find_package(GTest CONFIG QUIET)
  if(NOT GTest_FOUND)
    roam_dependency_missing("GoogleTest and GoogleMock" "libgtest-dev libgmock-dev")
  endif()
  roam_report_dependency("GoogleTest" "${GTest_VERSION}")
  include(GoogleTest)
endif()

# --- Optional -----------------------------------------------------------
# rdma-core verbs headers: only a future direct verbs backend would use them
# (UCX reaches verbs on its own).
# ROAM_VERBS=OFF does not look (Spack's ~verbs: no rdma-core from the host).
set(ROAM_HAVE_VERBS OFF)
if(ROAM_VERBS)
  pkg_check_modules(IBVERBS QUIET IMPORTED_TARGET libibverbs)
  set(ROAM_HAVE_VERBS ${IBVERBS_FOUND})
endif()

find_package(benchmark CONFIG QUIET)
set(ROAM_HAVE_BENCHMARK ${benchmark_FOUND})
