"""Print the torch/torchvision requirements of pyproject.toml's `server` extra, one a line.

The CPU image installs these from the CPU-only wheel index before installing the package, so
that the version pins stay in pyproject.toml alone (Dockerfile, VARIANT=cpu).
"""

import re
import sys
import tomllib

TORCH_PACKAGES = re.compile(r"^(torch|torchvision)\s*(==|>=|~=|<|>|!=|$)")


def torch_requirements(pyproject_path: str) -> list[str]:
    with open(pyproject_path, "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["server"]
    found = [r for r in extra if TORCH_PACKAGES.match(r)]
    if {TORCH_PACKAGES.match(r).group(1) for r in found} != {"torch", "torchvision"}:
        raise SystemExit(f"{pyproject_path}: the server extra must pin torch and torchvision")
    return found


if __name__ == "__main__":
    print("\n".join(torch_requirements(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
