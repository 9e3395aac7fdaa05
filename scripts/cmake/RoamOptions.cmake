# Build options and the flags every roam target shares.

option(ROAM_WERROR "Treat compiler warnings as errors (scripts/test and CI turn this on)" OFF)
option(ROAM_BUILD_TESTS "Build the GoogleTest suites and register them with ctest" ON)
option(ROAM_FUZZ "Build fuzz targets against libFuzzer (needs clang); otherwise they replay their seed corpus" OFF)
option(ROAM_VERBS "Look for rdma-core verbs (libibverbs); roam info reports it, a direct verbs backend would use it (UCX reaches verbs on its own)" ON)
set(ROAM_SANITIZE "" CACHE STRING "Sanitizers for every target, e.g. 'address,undefined' (empty: none)")

set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set(CMAKE_EXPORT_COMPILE_COMMANDS ON)  # for clang-tidy and clangd

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE RelWithDebInfo CACHE STRING "Build type" FORCE)
endif()

# Programs land in build/bin, libraries in build/lib.
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/bin")
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/lib")
set(CMAKE_ARCHIVE_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/lib")

# Warnings apply to roam's own sources only (generated protobuf code is exempt);
# roam_add_* attach them through this interface target.
add_library(roam_warnings INTERFACE)
target_compile_options(roam_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align
  -Woverloaded-virtual -Wformat=2 -Wimplicit-fallthrough)
if(ROAM_WERROR)
  target_compile_options(roam_warnings INTERFACE -Werror)
endif()

if(ROAM_SANITIZE)
  add_compile_options(-fsanitize=${ROAM_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${ROAM_SANITIZE})
endif()

if(ROAM_FUZZ AND NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "roam: ROAM_FUZZ=ON needs clang (libFuzzer); configure with -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang")
endif()
