# Small helpers that give every roam target the same shape.
#
#   roam_add_library(NAME <n> SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
#       static library roam_<n>, alias roam::<n>; <folder>/include is public,
#       the source root is private (private headers: #include "core/x/y.h").
#   roam_add_executable(NAME <n> SOURCES ... [DEPS ...])      -> build/bin/<n>
#   roam_add_test(NAME <n> SOURCES ... LABELS unit|e2e|slow TIMEOUT <s> [DEPS ...])
#       a GoogleTest binary in build/tests; each TEST becomes a ctest test
#       carrying the label and timeout. roam::testing::BuildDir() and
#       SourceDir() name the trees it was built from.
#   roam_add_fuzz_target(NAME <n> SOURCES ... CORPUS <dir> [DEPS ...])
#       libFuzzer target with ROAM_FUZZ=ON (clang); otherwise a replay binary
#       that ctest runs over the seed corpus (label unit).
#   roam_add_proto_library(NAME <n> PROTOS ...)  -> roam::<n>, generated C++
#   roam_add_flatbuffers_library(NAME <n> SCHEMAS ...)  -> roam::<n>, headers

set(ROAM_TEST_LABELS unit e2e slow)

function(_roam_common_target_setup target)
  target_include_directories(${target} PRIVATE "${PROJECT_SOURCE_DIR}" "${PROJECT_BINARY_DIR}/generated")
  target_link_libraries(${target} PRIVATE roam_warnings)
endfunction()

function(roam_add_library)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  if(NOT ARG_NAME OR NOT ARG_SOURCES)
    message(FATAL_ERROR "roam_add_library: NAME and SOURCES are required")
  endif()
  set(target roam_${ARG_NAME})
  add_library(${target} STATIC ${ARG_SOURCES})
  add_library(roam::${ARG_NAME} ALIAS ${target})
  if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/include")
    target_include_directories(${target} PUBLIC "${CMAKE_CURRENT_SOURCE_DIR}/include")
  endif()
  _roam_common_target_setup(${target})
  target_link_libraries(${target} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
endfunction()

function(roam_add_executable)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  _roam_common_target_setup(${ARG_NAME})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
endfunction()

function(_roam_check_label_and_timeout who labels timeout)
  if(NOT labels)
    message(FATAL_ERROR "${who}: LABELS is required (one of: ${ROAM_TEST_LABELS})")
  endif()
  foreach(label IN LISTS labels)
    if(NOT label IN_LIST ROAM_TEST_LABELS)
      message(FATAL_ERROR "${who}: unknown label '${label}' (use: ${ROAM_TEST_LABELS})")
    endif()
  endforeach()
  if(NOT timeout MATCHES "^[1-9][0-9]*$")
    message(FATAL_ERROR "${who}: TIMEOUT <seconds> is required")
  endif()
endfunction()

function(roam_add_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  _roam_check_label_and_timeout("roam_add_test(${ARG_NAME})" "${ARG_LABELS}" "${ARG_TIMEOUT}")
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  _roam_common_target_setup(${ARG_NAME})
  set_target_properties(${ARG_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/tests")
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} roam::testing GTest::gmock GTest::gtest_main)
  gtest_discover_tests(${ARG_NAME}
    TEST_PREFIX "${ARG_NAME}."
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
endfunction()

# A ctest test that is a plain command (not a GoogleTest binary).
function(roam_add_command_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "COMMAND;LABELS" ${ARGN})
  _roam_check_label_and_timeout("roam_add_command_test(${ARG_NAME})" "${ARG_LABELS}" "${ARG_TIMEOUT}")
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_COMMAND})
  set_tests_properties(${ARG_NAME} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
endfunction()

function(roam_add_fuzz_target)
  cmake_parse_arguments(ARG "" "NAME;CORPUS" "SOURCES;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  _roam_common_target_setup(${ARG_NAME})
  set_target_properties(${ARG_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/fuzz")
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  if(ROAM_FUZZ)
    target_compile_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer)
    target_link_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer)
    # libFuzzer: a corpus directory runs each input once with -runs=0.
    set(replay_args -runs=0 "${ARG_CORPUS}")
  else()
    target_link_libraries(${ARG_NAME} PRIVATE roam::fuzz_replay)
    set(replay_args "${ARG_CORPUS}")
  endif()
  roam_add_command_test(NAME fuzz.${ARG_NAME}.seed_corpus LABELS unit TIMEOUT 120
    COMMAND ${ARG_NAME} ${replay_args})
endfunction()

function(roam_add_proto_library)
  cmake_parse_arguments(ARG "" "NAME" "PROTOS" ${ARGN})
  # Generated files keep the schema's path from the source root, so
  # core/base/error.proto is included as "core/base/error.pb.h".
  set(out "${PROJECT_BINARY_DIR}/generated")
  set(sources "")
  foreach(proto IN LISTS ARG_PROTOS)
    set(abs "${CMAKE_CURRENT_SOURCE_DIR}/${proto}")
    file(RELATIVE_PATH rel "${PROJECT_SOURCE_DIR}" "${abs}")
    string(REGEX REPLACE "\\.proto$" "" stem "${rel}")
    add_custom_command(
      OUTPUT "${out}/${stem}.pb.cc" "${out}/${stem}.pb.h"
      COMMAND ${CMAKE_COMMAND} -E make_directory "${out}"
      COMMAND ${Protobuf_PROTOC_EXECUTABLE} --cpp_out=${out} -I${PROJECT_SOURCE_DIR} ${abs}
      DEPENDS "${abs}"
      COMMENT "protoc ${rel}")
    list(APPEND sources "${out}/${stem}.pb.cc")
  endforeach()
  set(target roam_${ARG_NAME})
  add_library(${target} STATIC ${sources})
  add_library(roam::${ARG_NAME} ALIAS ${target})
  target_include_directories(${target} PUBLIC "${out}")
  target_link_libraries(${target} PUBLIC protobuf::libprotobuf)
endfunction()

function(roam_add_flatbuffers_library)
  cmake_parse_arguments(ARG "" "NAME" "SCHEMAS" ${ARGN})
  # As for protos: core/load/load.fbs is included as
  # "core/load/load_generated.h".
  set(out "${PROJECT_BINARY_DIR}/generated")
  set(headers "")
  foreach(schema IN LISTS ARG_SCHEMAS)
    set(abs "${CMAKE_CURRENT_SOURCE_DIR}/${schema}")
    file(RELATIVE_PATH rel "${PROJECT_SOURCE_DIR}" "${abs}")
    string(REGEX REPLACE "\\.fbs$" "" stem "${rel}")
    get_filename_component(dir "${out}/${stem}" DIRECTORY)
    add_custom_command(
      OUTPUT "${out}/${stem}_generated.h"
      COMMAND ${CMAKE_COMMAND} -E make_directory "${dir}"
      COMMAND ${ROAM_FLATC} --cpp --scoped-enums --gen-mutable -o "${dir}" "${abs}"
      DEPENDS "${abs}"
      COMMENT "flatc ${rel}")
    list(APPEND headers "${out}/${stem}_generated.h")
  endforeach()
  set(target roam_${ARG_NAME})
  add_custom_target(${target}_gen DEPENDS ${headers})
  add_library(${target} INTERFACE)
  add_library(roam::${ARG_NAME} ALIAS ${target})
  add_dependencies(${target} ${target}_gen)
  target_include_directories(${target} INTERFACE "${out}")
  target_link_libraries(${target} INTERFACE flatbuffers::flatbuffers)
endfunction()

function(roam_print_summary)
  message(STATUS "")
  message(STATUS "roam ${PROJECT_VERSION} configuration")
  message(STATUS "  build type        ${CMAKE_BUILD_TYPE}")
  message(STATUS "  compiler          ${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}")
  message(STATUS "  -Werror           ${ROAM_WERROR}")
  message(STATUS "  sanitizers        ${ROAM_SANITIZE}")
  message(STATUS "  tests             ${ROAM_BUILD_TESTS}")
  message(STATUS "  fuzzing           ${ROAM_FUZZ} (off: fuzz targets replay their seed corpus)")
  foreach(entry IN LISTS ROAM_DEPENDENCY_REPORT)
    if(entry)
      string(REPLACE "=" ";" pair "${entry}")
      list(GET pair 0 what)
      list(GET pair 1 version)
      string(LENGTH "${what}" len)
      math(EXPR pad "18 - ${len}")
      string(REPEAT " " ${pad} spaces)
      message(STATUS "  ${what}${spaces}${version} (required)")
    endif()
  endforeach()
  if(NOT ROAM_VERBS)
    message(STATUS "  rdma-core verbs   not looked for (ROAM_VERBS=OFF)")
  elseif(ROAM_HAVE_VERBS)
    message(STATUS "  rdma-core verbs   ${IBVERBS_VERSION} (optional: found)")
  else()
    message(STATUS "  rdma-core verbs   not found (optional: install libibverbs-dev for a future direct verbs backend)")
  endif()
  if(ROAM_HAVE_BENCHMARK)
    message(STATUS "  Google Benchmark  ${benchmark_VERSION} (optional: found, bench/ is built)")
  else()
    message(STATUS "  Google Benchmark  not found (optional: install libbenchmark-dev to build bench/)")
  endif()
  message(STATUS "")
endfunction()
