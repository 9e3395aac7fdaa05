cmake_minimum_required(VERSION 3.25)
# Configures roam twice in scratch directories with one required dependency
# hidden each time, and checks that configure fails naming the Debian package.
# cmake -DSOURCE_DIR=... -DSCRATCH=... -P this
function(expect_missing tag package)
  set(dir "${SCRATCH}/${tag}")
  file(REMOVE_RECURSE "${dir}")
  execute_process(
    COMMAND ${CMAKE_COMMAND} -E env ${ARGN}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  file(REMOVE_RECURSE "${dir}")
  if(rc EQUAL 0)
    message(FATAL_ERROR "${tag}: configure succeeded with the dependency hidden")
  endif()
  string(REGEX REPLACE "[ \t\r\n]+" " " flat "${err}")  # CMake wraps long messages
  if(NOT flat MATCHES "install the Debian package '${package}'")
    message(FATAL_ERROR "${tag}: configure failed without naming ${package}:\n${err}")
  endif()
  message(STATUS "${tag}: configure failed and named ${package}")
endfunction()

expect_missing(ucx "libucx-dev"
  ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${SCRATCH}/ucx -DCMAKE_DISABLE_FIND_PACKAGE_ucx=ON)
expect_missing(hwloc "libhwloc-dev"
  PKG_CONFIG_LIBDIR=/nonexistent PKG_CONFIG_PATH=
  ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${SCRATCH}/hwloc)
expect_missing(protobuf "libprotobuf-dev protobuf-compiler"
  ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${SCRATCH}/protobuf -DCMAKE_DISABLE_FIND_PACKAGE_Protobuf=ON)
expect_missing(flatbuffers "libflatbuffers-dev flatbuffers-compiler"
  ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${SCRATCH}/flatbuffers
  -DCMAKE_DISABLE_FIND_PACKAGE_FlatBuffers=ON)
expect_missing(openssl "libssl-dev"
  ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${SCRATCH}/openssl -DCMAKE_DISABLE_FIND_PACKAGE_OpenSSL=ON)
file(REMOVE_RECURSE "${SCRATCH}")
