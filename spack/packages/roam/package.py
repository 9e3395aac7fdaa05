# roam's Spack package. tests/build/spack_package_check.py checks that its
# dependencies and variants match what CMake looks for and the CMake options
# (scripts/cmake/RoamOptions.cmake, RoamDependencies.cmake); change them
# together.

from spack.package import *


class Roam(CMakePackage):
    """Load-sharing runtime for a pool of Linux compute nodes: one roamd per
    node places unmodified programs and moves them while they run
    (MOSIX-style preemptive process migration) over UCX, with hwloc
    topology."""

    # Placeholders: roam has no public home page or repository address yet.
    # Point `git` at the repository you build from, or build a checkout in
    # place with `spack develop` in an environment (docs/install.md).
    homepage = "https://example.invalid/roam"
    git = "https://example.invalid/roam.git"

    # No release is tagged yet; 0.1.0 (CMake's project version) is main today.
    version("main", branch="main")

    variant(
        "verbs",
        default=False,
        description="InfiniBand/RoCE: UCX with verbs, and rdma-core for roam itself",
    )

    # Build tools: the compilers of project(LANGUAGES C CXX) and CMake's
    # cmake_minimum_required (CMakeLists.txt).
    depends_on("c", type="build")
    depends_on("cxx", type="build")
    depends_on("cmake@3.25:", type="build")
    depends_on("pkgconfig", type="build")
    # protoc and flatc run at build time; their libraries are linked.
    depends_on("protobuf")
    depends_on("flatbuffers")

    depends_on("ucx")
    depends_on("ucx+verbs", when="+verbs")
    depends_on("rdma-core", when="+verbs")
    depends_on("hwloc@2:")
    depends_on("pmix@4:")
    depends_on("xxhash@0.8:")
    depends_on("openssl@3:")
    depends_on("tl-expected")
    depends_on("fmt")
    depends_on("spdlog")
    depends_on("cli11")
    depends_on("nlohmann-json@3.2:")

    # Only for `spack install --test=root roam` (ROAM_BUILD_TESTS).
    depends_on("googletest+gmock", type="test")
    # The launcher tests run an MPI job under srun through `roam exec`.
    depends_on("mpi", type="test")

    # C++20 (CMAKE_CXX_STANDARD 20).
    conflicts("%gcc@:9", msg="roam needs a C++20 compiler (GCC 10 or newer)")

    def cmake_args(self):
        return [
            self.define_from_variant("ROAM_VERBS", "verbs"),
            self.define("ROAM_BUILD_TESTS", self.run_tests),
            # Developer options, off for an installed build.
            self.define("ROAM_WERROR", False),
            self.define("ROAM_FUZZ", False),
            self.define("ROAM_SANITIZE", ""),
        ]
