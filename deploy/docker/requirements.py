"""The image's dependency steps (Dockerfile, build stage), kept out of shell one-liners.

    python requirements.py server PYPROJECT      the base dependencies and the `server` extra of
                                                  pyproject.toml, one requirement a line (the
                                                  pins live in pyproject.toml alone)
    python requirements.py without-cuda REPORT   from `pip install --dry-run --report REPORT`:
                                                  every resolved distribution as name==version,
                                                  minus the CUDA runtime packages (cpu variant)
    python requirements.py check VARIANT         `pip check` of the running environment; for
                                                  VARIANT=cpu the missing CUDA runtime packages
                                                  (and nothing else) are expected

Why the cpu variant resolves first and then installs with --no-deps: the registry's torch for
Linux x86_64 is a CUDA build whose metadata requires about 3 GB of nvidia-*/cuda-*/triton
wheels, and pip installs whatever an installed or requested distribution requires. The full
resolution (the same one the cuda variant installs) minus those packages is the CPU install;
deploy/docker/cuda_stubs.py then satisfies the loader for the libraries they would have shipped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

# Distributions that only carry the CUDA runtime, compiler or GPU kernels (normalized names).
CUDA_RUNTIME = re.compile(r"^(nvidia-.+|cuda-.+|triton)$")
MISSING = re.compile(r"^(\S+) \S+ requires (\S+?),? which is not installed\.$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def server_requirements(pyproject_path: str) -> list[str]:
    with open(pyproject_path, "rb") as f:
        project = tomllib.load(f)["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["server"]]


def without_cuda(report: dict) -> tuple[list[str], list[str]]:
    """(requirements to install, CUDA runtime packages left out) from a pip install report."""
    keep, dropped = [], []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        (dropped if CUDA_RUNTIME.match(normalize(name)) else keep).append(f"{name}=={version}")
    names = {normalize(r.split("==")[0]) for r in keep}
    if "torch" not in names:
        raise SystemExit("requirements.py: the resolution has no torch (wrong report?)")
    return sorted(keep, key=str.lower), sorted(dropped, key=str.lower)


def check_problems(pip_check_output: str, variant: str) -> list[str]:
    """The lines of `pip check` output that are real problems for this variant."""
    problems = []
    for line in pip_check_output.splitlines():
        line = line.strip()
        if not line or line.startswith("No broken requirements"):
            continue
        missing = MISSING.match(line)
        if variant == "cpu" and missing and CUDA_RUNTIME.match(normalize(missing.group(2))):
            continue  # left out on purpose: cuda_stubs.py stands in for their libraries
        problems.append(line)
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("server", "without-cuda", "check"):
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    command, arg = argv
    if command == "server":
        print("\n".join(server_requirements(arg)))
    elif command == "without-cuda":
        with open(arg) as f:
            keep, dropped = without_cuda(json.load(f))
        print(f"requirements.py: left out {len(dropped)} CUDA runtime packages: "
              f"{' '.join(dropped)}", file=sys.stderr)
        print("\n".join(keep))
    else:
        if arg not in ("cpu", "cuda"):
            print(f"requirements.py: VARIANT must be cpu or cuda, not {arg!r}", file=sys.stderr)
            return 2
        result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                                text=True)
        problems = check_problems(result.stdout + result.stderr, arg)
        if problems:
            print("requirements.py: broken requirements:\n  " + "\n  ".join(problems),
                  file=sys.stderr)
            return 1
        print(f"requirements.py: pip check passes for the {arg} variant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
