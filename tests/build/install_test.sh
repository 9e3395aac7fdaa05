#!/usr/bin/env bash
# Installs a built tree into a fresh prefix with `cmake --install` and uses
# it as a user would. Two checks (ctest runs each):
#   install_test.sh prefix BUILD_DIR SOURCE_DIR VERSION
#       the installed files, `roam --version` and `roamd --version`, nothing
#       that should stay in the build tree, and a program outside roam built
#       against libroam with pkg-config and with find_package(roam), then run
#   install_test.sh module BUILD_DIR SOURCE_DIR VERSION
#       in a clean, non-login bash: Lmod's `module use <prefix>/share/modulefiles`,
#       `module load roam`, then roam from PATH, ROAM_ROOT, pkg-config, and
#       `module unload roam` taking it all back. Exits 77 (ctest: skipped)
#       with the reason when Lmod is not installed.
# The prefix is a new directory under /tmp, removed on every exit.
# CMAKE and CXX (ctest sets them to the build's) default to cmake and c++.
set -euo pipefail
mode=$1 build=$2 source=$3 version=$4
cmake=${CMAKE:-cmake}
cxx=${CXX:-c++}

scratch=$(mktemp -d /tmp/roam-install-test.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
prefix=$scratch/prefix
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

lmod_init=${ROAM_LMOD_INIT:-/usr/share/lmod/lmod/init/bash}  # override: tests of this script
if [[ $mode == module && ! -r $lmod_init ]]; then
  echo "SKIP: Lmod is not installed ($lmod_init missing; scripts/setup installs the Debian package lmod)"
  exit 77
fi

"$cmake" --install "$build" --prefix "$prefix" >"$scratch/install.log" 2>&1 ||
  { cat "$scratch/install.log"; fail "cmake --install $build --prefix $prefix"; }
# The library directory is lib, or lib/<multiarch> for a /usr prefix.
pc=$(find "$prefix" -path '*/pkgconfig/roam.pc' -print -quit)
[[ -n $pc ]] || fail "no pkgconfig/roam.pc under $prefix"
# shellcheck disable=SC2016  # ${prefix} is pkg-config's, not the shell's
libdir=$(sed -n 's|^libdir=${prefix}/||p' "$pc")
[[ -n $libdir ]] || fail "$pc has no libdir under \${prefix}"

check_prefix() {
  local f
  for f in bin/roam bin/roamd bin/roam-sim \
    "$libdir/libroam.so" "$libdir/pkgconfig/roam.pc" \
    "$libdir/cmake/roam/roamConfig.cmake" "$libdir/cmake/roam/roamConfigVersion.cmake" \
    include/roam/base/error.h include/roam/base/version.h \
    include/roam/transport/transport.h include/roam/transport/fake.h \
    "share/modulefiles/roam/$version.lua" share/doc/roam/README.md share/doc/roam/docs/install.md; do
    [[ -e $prefix/$f ]] || fail "not installed: $f"
  done
  echo "ok: programs, library, headers, pkg-config, CMake config, module and docs are there"
  # What stays in the build tree: static libraries, tests, benchmarks,
  # private headers.
  local stray
  stray=$(cd "$prefix" && find . \( -name '*.a' -o -name '*_test' -o -name '*_bench' \
    -o -path './include/roam/ckpt*' -o -path './include/core*' \) -print)
  [[ -z $stray ]] || fail "installed but should not be: $stray"
  ! ldd "$prefix/$libdir/libroam.so" | grep 'not found' || fail "libroam.so has unresolved libraries"

  local out
  out=$("$prefix/bin/roam" --version) || fail "roam --version exited $?"
  [[ $out == "roam $version "* ]] || fail "roam --version printed '$out', not roam $version"
  out=$("$prefix/bin/roamd" --version) || fail "roamd --version exited $?"
  [[ $out == "roamd $version "* ]] || fail "roamd --version printed '$out', not roamd $version"
  echo "ok: installed roam and roamd print version $version"

  # A program outside roam, against the installed prefix only.
  local consumer=$source/tests/build/install_consumer
  local flags
  flags=$(PKG_CONFIG_PATH=$prefix/$libdir/pkgconfig pkg-config --cflags --libs roam) ||
    fail "pkg-config --cflags --libs roam"
  [[ $(PKG_CONFIG_PATH=$prefix/$libdir/pkgconfig pkg-config --modversion roam) == "$version" ]] ||
    fail "pkg-config --modversion roam is not $version"
  # shellcheck disable=SC2086  # the flags are words
  "$cxx" -std=c++20 "$consumer/consumer.cc" $flags -o "$scratch/consumer_pc" ||
    fail "a program does not build with: $cxx -std=c++20 consumer.cc $flags"
  out=$(LD_LIBRARY_PATH=$prefix/$libdir "$scratch/consumer_pc") || fail "the pkg-config-built program failed"
  [[ $out == "roam $version ok" ]] || fail "the pkg-config-built program printed '$out'"
  echo "ok: built with pkg-config --cflags --libs roam ($flags), ran: $out"

  if ! "$cmake" -S "$consumer" -B "$scratch/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_CXX_COMPILER="$cxx" \
    >"$scratch/consumer.log" 2>&1 ||
    ! "$cmake" --build "$scratch/consumer-build" >>"$scratch/consumer.log" 2>&1; then
    cat "$scratch/consumer.log"
    fail "a program does not build with find_package(roam)"
  fi
  out=$("$scratch/consumer-build/consumer") || fail "the find_package-built program failed"
  [[ $out == "roam $version ok" ]] || fail "the find_package-built program printed '$out'"
  echo "ok: built with find_package(roam) and roam::roam, ran: $out"
}

check_module() {
  # env -i and --noprofile --norc: nothing from this shell or the machine's
  # profile (no MODULEPATH, no roam on PATH) but Lmod's own init script.
  # shellcheck disable=SC2016  # expanded by the clean bash, from its environment
  local script='
    set -eu
    source "$LMOD_INIT"
    module use "$PREFIX/share/modulefiles"
    if command -v roam >/dev/null; then echo "roam on PATH before load"; exit 1; fi
    module load roam
    echo "loaded: $(module -t list 2>&1 | tr "\n" " ")"
    echo "which: $(command -v roam)"
    echo "version: $(roam --version)"
    echo "ROAM_ROOT=$ROAM_ROOT"
    echo "pkg-config: $(pkg-config --modversion roam)"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "CMAKE_PREFIX_PATH=$CMAKE_PREFIX_PATH"
    module whatis roam 2>&1 | sed "s/^/whatis: /"
    module help roam 2>&1 | grep -m1 "roam $VERSION" | sed "s/^/help: /"
    module unload roam
    if command -v roam >/dev/null; then echo "roam still on PATH after unload"; exit 1; fi
    echo "unloaded: ROAM_ROOT=${ROAM_ROOT:-unset}"'
  local out
  out=$(env -i HOME="$scratch" PATH=/usr/local/bin:/usr/bin:/bin LMOD_INIT="$lmod_init" \
    PREFIX="$prefix" VERSION="$version" bash --noprofile --norc -c "$script" 2>&1) ||
    { echo "$out"; fail "loading the module with Lmod"; }
  echo "$out"
  grep -qx "which: $prefix/bin/roam" <<<"$out" || fail "roam on PATH is not $prefix/bin/roam"
  grep -q "^version: roam $version " <<<"$out" || fail "roam --version after module load is not $version"
  grep -qx "ROAM_ROOT=$prefix" <<<"$out" || fail "ROAM_ROOT is not $prefix"
  grep -qx "pkg-config: $version" <<<"$out" || fail "pkg-config does not find roam $version"
  grep -q "^LD_LIBRARY_PATH=$prefix/$libdir" <<<"$out" || fail "LD_LIBRARY_PATH lacks $prefix/$libdir"
  grep -q "^CMAKE_PREFIX_PATH=$prefix" <<<"$out" || fail "CMAKE_PREFIX_PATH lacks $prefix"
  grep -q "^whatis: .*Version: $version" <<<"$out" || fail "module whatis lacks the version"
  grep -q "^help: " <<<"$out" || fail "module help lacks the version"
  grep -qx "unloaded: ROAM_ROOT=unset" <<<"$out" || fail "module unload left ROAM_ROOT"
  echo "ok: module use + module load roam with Lmod: roam $version from PATH; unload takes it back"
}

case $mode in
  prefix) check_prefix ;;
  module) check_module ;;
  *) fail "unknown mode '$mode' (prefix or module)" ;;
esac
