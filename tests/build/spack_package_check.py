#!/usr/bin/env python3
"""Checks roam's Spack package against its CMake files, without Spack.

    spack_package_check.py SOURCE_DIR               check spack/packages/roam/package.py
    spack_package_check.py SOURCE_DIR --self-test   break copies on purpose; each must fail

package.py is read with `ast` (never imported: Spack is not installed), the
CMake files with regular expressions over their comment-free text. What is
checked, each failure naming the file, line and what to change:

  - every find_package / pkg_check_modules / find_program in roam's CMake
    files has a depends_on (names mapped below), or a reason in NOT_PACKAGED;
    a lookup that CMake makes only under if(<option>) is a conditional
    dependency: type="test" for ROAM_BUILD_TESTS, when="+<variant>" for an
    option a variant sets;
  - where CMake names a minimum version (hwloc>=2.0, OpenSSL 3) the
    package's lower bound is at least that; cmake@ matches
    cmake_minimum_required; c and cxx match project(LANGUAGES);
  - every depends_on comes from one of those lookups or build tools;
  - every variant sets a CMake option (define_from_variant), every option
    that cmake_args sets exists, and every CMake option is set by cmake_args
    or has a reason in OPTIONS_NOT_SET.
"""

import ast
import os
import re
import sys
import tempfile

# What CMake looks for -> the Spack package that provides it.
CMAKE_TO_SPACK = {
    "find_package:PkgConfig": "pkgconfig",
    "find_package:ucx": "ucx",
    "pkg_check_modules:hwloc": "hwloc",
    "pkg_check_modules:pmix": "pmix",
    "find_package:Protobuf": "protobuf",
    "find_package:FlatBuffers": "flatbuffers",
    "find_program:flatc": "flatbuffers",
    "pkg_check_modules:libxxhash": "xxhash",
    "find_package:OpenSSL": "openssl",
    "find_package:tl-expected": "tl-expected",
    "find_package:fmt": "fmt",
    "find_package:spdlog": "spdlog",
    "find_package:CLI11": "cli11",
    "find_package:nlohmann_json": "nlohmann-json",
    "find_package:GTest": "googletest",
    "find_package:MPI": "mpi",
    "pkg_check_modules:libibverbs": "rdma-core",
    "find_package:benchmark": "benchmark",
}

# What CMake looks for that the package deliberately does not depend on.
NOT_PACKAGED = {
    "find_package:Threads": "POSIX threads come with the C library and compiler",
    "find_package:benchmark": "Google Benchmark only builds bench/, which is never installed",
}

# CMake options and cache settings that cmake_args leaves at their default.
OPTIONS_NOT_SET = {
    "ROAM_MODULEFILES_DIR": "install layout: the default share/modulefiles is what docs/install.md names",
}

# Folders holding separate CMake projects, not roam's build.
SEPARATE_PROJECTS = ("tests/build/install_consumer",)

PACKAGE = "spack/packages/roam/package.py"


def strip_cmake_comments(text):
    out = []
    for line in text.splitlines():
        in_string = False
        for i, ch in enumerate(line):
            if ch == '"':
                in_string = not in_string
            elif ch == "#" and not in_string:
                line = line[:i]
                break
        out.append(line)
    return out


def cmake_files(source_dir):
    for root, dirs, files in os.walk(source_dir):
        rel_root = os.path.relpath(root, source_dir)
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".")
            and not (rel_root == "." and d.startswith("build"))  # build trees
            and os.path.normpath(os.path.join(rel_root, d)) not in SEPARATE_PROJECTS
        ]
        for name in files:
            if name == "CMakeLists.txt" or name.endswith(".cmake"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, source_dir), open(path).read()


def parse_version(text):
    return tuple(int(p) for p in re.findall(r"\d+", text))


def version_at_least(have, need):
    n = max(len(have), len(need))
    return have + (0,) * (n - len(have)) >= need + (0,) * (n - len(need))


class CMakeFacts:
    def __init__(self):
        self.lookups = []  # (key, min_version or None, conditions, where)
        self.options = {}  # name -> where
        self.cmake_minimum = None
        self.languages = set()


def read_cmake(files):
    facts = CMakeFacts()
    for rel, text in files:
        # The top CMakeLists.txt adds tests/ only if(ROAM_BUILD_TESTS).
        conditions = ["ROAM_BUILD_TESTS"] if rel.startswith("tests/") else []
        for number, line in enumerate(strip_cmake_comments(text), 1):
            where = f"{rel}:{number}"
            stripped = line.strip()
            m = re.match(r"if\s*\((.*?)\)?\s*$", stripped, re.I)
            if m:
                conditions.append(m.group(1).strip())
                continue
            if re.match(r"endif\s*\(", stripped, re.I):
                if not conditions:
                    raise SystemExit(f"{where}: endif() without if() (the check cannot follow this file)")
                conditions.pop()
                continue
            if re.match(r"else(if)?\s*\(", stripped, re.I) and conditions:
                conditions[-1] = "else of " + conditions[-1]
                continue
            m = re.match(r"find_package\s*\(\s*([\w.+-]+)(?:\s+(\d[\d.]*))?", stripped, re.I)
            if m:
                facts.lookups.append((f"find_package:{m.group(1)}", m.group(2), list(conditions), where))
            m = re.match(r"pkg_check_modules\s*\(\s*\w+\s+(.*)\)", stripped, re.I)
            if m:
                words = [w for w in m.group(1).split() if w not in ("QUIET", "REQUIRED", "IMPORTED_TARGET", "GLOBAL")]
                for word in words:
                    name, _, minimum = word.partition(">=")
                    facts.lookups.append((f"pkg_check_modules:{name}", minimum or None, list(conditions), where))
            m = re.match(r"find_program\s*\(\s*\w+\s+(?:NAMES\s+)?([\w.+-]+)", stripped, re.I)
            if m:
                facts.lookups.append((f"find_program:{m.group(1)}", None, list(conditions), where))
            m = re.match(r"option\s*\(\s*(ROAM_\w+)", stripped)
            if m:
                facts.options[m.group(1)] = where
            m = re.match(r"set\s*\(\s*(ROAM_\w+)\s.*\bCACHE\b", stripped)
            if m:
                facts.options[m.group(1)] = where
            m = re.match(r"cmake_minimum_required\s*\(\s*VERSION\s+([\d.]+)", stripped, re.I)
            if m and rel == "CMakeLists.txt":
                facts.cmake_minimum = m.group(1)
        if rel == "CMakeLists.txt":
            m = re.search(r"project\s*\(.*?LANGUAGES\s+([\w\s]+?)\)", text, re.S)
            if m:
                facts.languages = {lang.lower() for lang in m.group(1).split()}
    return facts


class PackageFacts:
    def __init__(self):
        self.depends = []  # (name, spec, when, types, line)
        self.variants = {}  # name -> line
        self.defines = {}  # cmake option -> (variant or None, line)


def literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def read_package(text):
    facts = PackageFacts()
    tree = ast.parse(text, PACKAGE)
    classes = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and any(getattr(b, "id", None) == "CMakePackage" for b in n.bases)
    ]
    if len(classes) != 1:
        raise SystemExit(f"{PACKAGE}: expected one class deriving from CMakePackage, found {len(classes)}")
    for node in ast.walk(classes[0]):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        keywords = {k.arg: literal(k.value) for k in node.keywords}
        if isinstance(func, ast.Name) and func.id == "depends_on":
            spec = literal(node.args[0])
            name = re.match(r"[\w-]+", spec).group(0)
            types = keywords.get("type") or ("build", "link")
            if isinstance(types, str):
                types = (types,)
            facts.depends.append((name, spec, keywords.get("when"), tuple(types), node.lineno))
        elif isinstance(func, ast.Name) and func.id == "variant":
            facts.variants[literal(node.args[0])] = node.lineno
        elif isinstance(func, ast.Attribute) and func.attr in ("define", "define_from_variant"):
            option = literal(node.args[0])
            variant = None
            if func.attr == "define_from_variant":
                variant = literal(node.args[1]) if len(node.args) > 1 else option.lower()
            facts.defines[option] = (variant, node.lineno)
    return facts


def check(cmake, package):
    """Returns the list of mismatches (empty: the package matches CMake)."""
    problems = []
    at = f"{PACKAGE}:"
    variant_of_option = {opt: v for opt, (v, _) in package.defines.items() if v}
    depends_by_name = {}
    for dep in package.depends:
        depends_by_name.setdefault(dep[0], []).append(dep)

    expected_names = set()
    for key, minimum, conditions, where in cmake.lookups:
        if key in NOT_PACKAGED:
            continue
        name = CMAKE_TO_SPACK.get(key)
        if name is None:
            problems.append(
                f"{where}: CMake looks for {key.split(':', 1)[1]} ({key.split(':')[0]}) and the package has no"
                f" depends_on for it: add one to {PACKAGE}, its Spack name to CMAKE_TO_SPACK in"
                f" {os.path.basename(__file__)} (or a reason to NOT_PACKAGED)"
            )
            continue
        expected_names.add(name)
        deps = depends_by_name.get(name)
        if not deps:
            problems.append(f"{where}: CMake looks for {key.split(':', 1)[1]}; {at} has no depends_on(\"{name}...\")")
            continue
        option_conditions = [c for c in conditions if re.fullmatch(r"ROAM_\w+", c)]
        for option in option_conditions:
            if option == "ROAM_BUILD_TESTS":
                if any("test" not in types or set(types) - {"test"} for _, _, _, types, _ in deps):
                    problems.append(
                        f"{where}: CMake looks for {name} only with tests (if(ROAM_BUILD_TESTS));"
                        f" {at} its depends_on must be type=\"test\""
                    )
            elif option in variant_of_option:
                variant = variant_of_option[option]
                if not any(when and f"+{variant}" in when for _, _, when, _, _ in deps):
                    problems.append(
                        f"{where}: CMake looks for {name} only if({option}) (variant {variant});"
                        f" {at} its depends_on needs when=\"+{variant}\""
                    )
            else:
                problems.append(
                    f"{where}: CMake looks for {name} only if({option}), which no variant sets;"
                    f" {at} add a variant and define_from_variant(\"{option}\", ...)"
                )
        if not option_conditions and all(when for _, _, when, _, _ in deps):
            problems.append(f"{where}: CMake always looks for {name}; {at} depends on it only when {deps[0][2]}")
        if minimum:
            bounds = [re.search(r"@([\d.]+):", spec) for _, spec, _, _, _ in deps]
            bounds = [parse_version(b.group(1)) for b in bounds if b]
            if not any(version_at_least(b, parse_version(minimum)) for b in bounds):
                problems.append(
                    f"{where}: CMake needs {name} >= {minimum}; {at} no depends_on(\"{name}@{minimum}:\") or higher bound"
                )

    # Build tools: the compilers and CMake itself.
    for language in sorted(cmake.languages):
        expected_names.add(language)
        if language not in depends_by_name:
            problems.append(f"CMakeLists.txt: project(LANGUAGES) has {language.upper()}; {at} no depends_on(\"{language}\", type=\"build\")")
    expected_names.add("cmake")
    cmake_deps = depends_by_name.get("cmake", [])
    if cmake.cmake_minimum and not any(spec == f"cmake@{cmake.cmake_minimum}:" for _, spec, _, _, _ in cmake_deps):
        problems.append(
            f"CMakeLists.txt: cmake_minimum_required(VERSION {cmake.cmake_minimum}); "
            f"{at} needs depends_on(\"cmake@{cmake.cmake_minimum}:\", type=\"build\")"
        )

    for name, spec, _, _, line in package.depends:
        if name not in expected_names:
            problems.append(f"{at}{line}: depends_on(\"{spec}\") matches nothing CMake looks for")

    for variant, line in package.variants.items():
        if variant not in variant_of_option.values():
            problems.append(f"{at}{line}: variant '{variant}' sets no CMake option (no define_from_variant in cmake_args)")
    for option, (variant, line) in package.defines.items():
        if option not in cmake.options:
            problems.append(f"{at}{line}: cmake_args sets {option}, which is no CMake option")
        if variant and variant not in package.variants:
            problems.append(f"{at}{line}: define_from_variant(\"{option}\", \"{variant}\") names no variant")
    for option, where in sorted(cmake.options.items()):
        if option not in package.defines and option not in OPTIONS_NOT_SET:
            problems.append(
                f"{where}: CMake option {option} is neither set by {PACKAGE} cmake_args nor"
                f" listed with a reason in OPTIONS_NOT_SET"
            )
    for option in OPTIONS_NOT_SET:
        if option not in cmake.options:
            problems.append(f"{os.path.basename(__file__)}: OPTIONS_NOT_SET names {option}, which is no CMake option")
    for key in NOT_PACKAGED:
        if not any(key == k for k, _, _, _ in cmake.lookups):
            problems.append(f"{os.path.basename(__file__)}: NOT_PACKAGED names {key}, which CMake no longer looks for")
    return problems


def run_check(source_dir, package_text, extra_cmake=()):
    cmake = read_cmake(list(cmake_files(source_dir)) + list(extra_cmake))
    return check(cmake, read_package(package_text))


# Deliberate breakage: (what, edit of package.py or None, extra CMake file or
# None, text the failure must contain).
MUTATIONS = [
    ("a dependency dropped", ('    depends_on("hwloc@2:")\n', ""), None, 'depends_on("hwloc'),
    ("a version bound below CMake's", ('"pmix@4:"', '"pmix@3:"'), None, "pmix >= 4"),
    ("a variant without a CMake option", ("    variant(\n", '    variant("cuda", default=False, description="x")\n    variant(\n'), None, "variant 'cuda'"),
    ("a variant's option renamed", ('define_from_variant("ROAM_VERBS"', 'define_from_variant("ROAM_VERB"'), None, "ROAM_VERB,"),
    ("an option no longer set", ('            self.define("ROAM_WERROR", False),\n', ""), None, "ROAM_WERROR is neither"),
    ("an optional dependency made unconditional", ('depends_on("rdma-core", when="+verbs")', 'depends_on("rdma-core")'), None, 'when="+verbs"'),
    ("a test dependency linked always", ('depends_on("googletest+gmock", type="test")', 'depends_on("googletest+gmock")'), None, 'type="test"'),
    ("a dependency CMake does not look for", ('    depends_on("fmt")\n', '    depends_on("fmt")\n    depends_on("boost")\n'), None, 'depends_on("boost")'),
    ("CMake looking for a new package", None, ("core/new/CMakeLists.txt", "find_package(Boost 1.80 REQUIRED)\n"), "looks for Boost"),
    ("a CMake option without a variant", None, ("scripts/cmake/New.cmake", 'option(ROAM_CUDA "x" OFF)\n'), "ROAM_CUDA is neither"),
]


def self_test(source_dir):
    package_text = open(os.path.join(source_dir, PACKAGE)).read()
    failures = 0
    baseline = run_check(source_dir, package_text)
    if baseline:
        print("self-test: the real package already fails:\n  " + "\n  ".join(baseline))
        failures += 1
    for what, edit, extra, expected in MUTATIONS:
        text = package_text
        if edit:
            if edit[0] not in text:
                print(f"self-test: '{what}': {PACKAGE} no longer contains {edit[0]!r}; update MUTATIONS")
                failures += 1
                continue
            text = text.replace(edit[0], edit[1], 1)
        with tempfile.TemporaryDirectory() as scratch:
            # The broken copy is written out and read back as the check reads the real one.
            copy = os.path.join(scratch, "package.py")
            with open(copy, "w") as f:
                f.write(text)
            problems = run_check(source_dir, open(copy).read(), [extra] if extra else [])
        caught = [p for p in problems if expected in p]
        if caught:
            print(f"self-test: {what}: caught: {caught[0]}")
        else:
            print(f"self-test: {what}: NOT caught (wanted a failure containing {expected!r}); got: {problems}")
            failures += 1
    print(f"self-test: {len(MUTATIONS) - failures} of {len(MUTATIONS)} deliberate breakages caught" if not failures else "self-test: FAILED")
    return 1 if failures else 0


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--self-test"):
        print(__doc__, file=sys.stderr)
        return 2
    source_dir = sys.argv[1]
    if len(sys.argv) == 3:
        return self_test(source_dir)
    problems = run_check(source_dir, open(os.path.join(source_dir, PACKAGE)).read())
    for problem in problems:
        print("FAIL: " + problem)
    if problems:
        return 1
    cmake = read_cmake(list(cmake_files(source_dir)))
    package = read_package(open(os.path.join(source_dir, PACKAGE)).read())
    print(
        f"ok: {PACKAGE} matches the CMake files: {len(cmake.lookups)} lookups,"
        f" {len(package.depends)} depends_on, {len(package.variants)} variant(s),"
        f" {len(cmake.options)} CMake options ({len(OPTIONS_NOT_SET)} left at their default with a reason)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
