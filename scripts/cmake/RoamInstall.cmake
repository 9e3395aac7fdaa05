# What `cmake --install` puts under the prefix (docs/install.md):
#
#   bin/roam, bin/roamd, bin/roam-sim        the programs
#   lib/libroam.so.0.1                       roam's public C++ API: the transport
#                                            (include/roam/transport) and the error
#                                            type it returns (include/roam/base)
#   include/roam/{base,transport}/*.h        its headers (C++20)
#   lib/pkgconfig/roam.pc                    pkg-config --cflags --libs roam
#   lib/cmake/roam/roamConfig*.cmake         find_package(roam) -> roam::roam
#   share/doc/roam/                          README.md, docs/*.md
#   share/modulefiles/roam/<version>.lua     an Lmod module: module load roam
#
# Everything else (the daemon's, checkpoint's and policy's libraries, tests,
# benchmarks, fuzz targets) stays in the build tree: those headers are shared
# between roam's folders, not an interface promised to other programs.
#
# Included from the top-level CMakeLists.txt after every folder, so that the
# targets below exist; install(TARGETS) of targets made in other folders is
# allowed from here.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ROAM_MODULEFILES_DIR "${CMAKE_INSTALL_DATADIR}/modulefiles" CACHE STRING
  "Where the Lmod module goes, relative to the prefix (module use <prefix>/<this>)")

# --- Programs -----------------------------------------------------------
# They link roam's libraries statically and need no RPATH of their own.
install(TARGETS roam roamd roam-sim RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")

# --- The public library ---------------------------------------------------
# One shared library made of the objects of roam::base, roam::base_wire and
# roam::transport (whose own static libraries the programs keep using).
# Their remaining dependencies (UCX, protobuf and the generated wire code)
# are linked in from the static archives or as shared libraries, so a user
# links -lroam and nothing of UCX or protobuf.
set(_roam_public_parts roam_base roam_base_wire roam_transport)
set(_roam_public_objects "")
foreach(part IN LISTS _roam_public_parts)
  list(APPEND _roam_public_objects "$<TARGET_OBJECTS:${part}>")
endforeach()
add_library(roam_public SHARED ${_roam_public_objects})
add_library(roam::roam ALIAS roam_public)
# The static parts come after the objects: none of their members is pulled in
# again (every symbol they define is already there), but what they depend on
# (generated protobuf code, UCX, protobuf, fmt) is.
target_link_libraries(roam_public PRIVATE ${_roam_public_parts})
target_link_libraries(roam_public INTERFACE fmt::fmt tl::expected)
target_compile_features(roam_public INTERFACE cxx_std_20)
target_include_directories(roam_public INTERFACE
  "$<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/core/base/include>"
  "$<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/transport/include>"
  "$<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/generated>"
  "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
# 0.x: the interface may change with every minor version, so the soname
# carries it (libroam.so.0.1).
set_target_properties(roam_public PROPERTIES
  OUTPUT_NAME roam
  EXPORT_NAME roam
  VERSION "${PROJECT_VERSION}"
  SOVERSION "${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}")

install(TARGETS roam_public EXPORT roamTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/core/base/include/roam/base"
                  "${PROJECT_SOURCE_DIR}/transport/include/roam/transport"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/roam"
  FILES_MATCHING PATTERN "*.h")
install(FILES "${PROJECT_BINARY_DIR}/generated/roam/base/version.h"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/roam/base")

# CMake: find_package(roam) gives the imported target roam::roam.
set(_roam_cmake_dir "${CMAKE_INSTALL_LIBDIR}/cmake/roam")
install(EXPORT roamTargets NAMESPACE roam:: DESTINATION "${_roam_cmake_dir}")
configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/install/roamConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/install/roamConfig.cmake"
  INSTALL_DESTINATION "${_roam_cmake_dir}")
# 0.x: a request for 0.1 accepts 0.1.z only.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/install/roamConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}" COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/install/roamConfig.cmake"
              "${PROJECT_BINARY_DIR}/install/roamConfigVersion.cmake"
  DESTINATION "${_roam_cmake_dir}")

# --- pkg-config and the module: written at install time -------------------
# Both name the prefix that `cmake --install --prefix P` (or Spack) installs
# into, which is only known then: the templates are filled once here with
# what configure knows, and once more by the install step with the prefix.
#
# The public headers include <tl/expected.hpp>, which has no pkg-config file:
# its include directory goes into Cflags unless the compiler searches it
# anyway (Debian's /usr/include).
get_target_property(_roam_expected_includes tl::expected INTERFACE_INCLUDE_DIRECTORIES)
set(ROAM_PC_EXTRA_CFLAGS "")
foreach(dir IN LISTS _roam_expected_includes)
  if(dir AND NOT dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
    string(APPEND ROAM_PC_EXTRA_CFLAGS " -I${dir}")
  endif()
endforeach()

set(_roam_templates "${CMAKE_CURRENT_LIST_DIR}/install")
set(ROAM_PREFIX "@ROAM_PREFIX@")  # kept for the install step to fill
set(_roam_staged "${PROJECT_BINARY_DIR}/install")
configure_file("${_roam_templates}/roam.pc.in" "${_roam_staged}/roam.pc.in" @ONLY)
configure_file("${_roam_templates}/modulefile.lua.in" "${_roam_staged}/modulefile.lua.in" @ONLY)

install(CODE "
  # DESTDIR stages the files; their contents name the final prefix.
  set(ROAM_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  configure_file(\"${_roam_staged}/roam.pc.in\"
    \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig/roam.pc\" @ONLY)
  message(STATUS \"Installing: \$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig/roam.pc\")
  configure_file(\"${_roam_staged}/modulefile.lua.in\"
    \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${ROAM_MODULEFILES_DIR}/roam/${PROJECT_VERSION}.lua\" @ONLY)
  message(STATUS \"Installing: \$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${ROAM_MODULEFILES_DIR}/roam/${PROJECT_VERSION}.lua\")
")

# --- Documentation --------------------------------------------------------
install(FILES "${PROJECT_SOURCE_DIR}/README.md" DESTINATION "${CMAKE_INSTALL_DOCDIR}")
# docs/ keeps its name so that README.md's links work where it is installed.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/docs" DESTINATION "${CMAKE_INSTALL_DOCDIR}"
  FILES_MATCHING PATTERN "*.md" PATTERN "*.png")
