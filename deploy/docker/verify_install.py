"""Build-time check of the image's environment (Dockerfile, build stage; `python -P`, so the
installed package is checked, not the sources in the build context):

    python -P verify_install.py VARIANT

- the shipped weights (the installed reprocodec-weights distribution, where
  reprocodec.shipped.WEIGHTS_DIR finds them): every NAME.json has its NAME.pt, and the file's
  SHA-256 is the json's `weights_sha256` (what every stream names and every decoder checks);
- VARIANT=cpu: no CUDA runtime distribution is installed, and torch reports no GPU;
- an in-process encode (profile cpu) and a verified decode (profile cpu-nomkldnn, other float
  results) of a shipped sample image through the command-line tool: torch, compressai, the
  numba kernels and the weights all load and agree in this environment.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path


def check_weights(weights: Path | None = None) -> list[str]:
    """The model names whose weights match their metadata; AssertionError or
    UnknownModelError (the package's own hash check) otherwise."""
    from reprocodec.shipped import WEIGHTS_DIR, check_weights_hash

    weights = weights or WEIGHTS_DIR
    metas = sorted(weights.glob("*.json"))
    assert metas, f"no model metadata in {weights}"
    orphans = {p.stem for p in weights.glob("*.pt")} - {p.stem for p in metas}
    assert not orphans, f"weights without metadata: {sorted(orphans)}"
    for meta in metas:
        pt = meta.with_suffix(".pt")
        assert pt.exists(), f"{meta.name} has no {pt.name}"
        check_weights_hash(pt, json.loads(meta.read_text())["weights_sha256"])
    return [m.stem for m in metas]


def check_cpu_only() -> None:
    cuda_dists = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                        if re.match(r"^(nvidia|cuda)[-_.]|^triton$", d.metadata["Name"].lower()))
    assert not cuda_dists, f"CUDA runtime packages in the cpu variant: {cuda_dists}"
    import torch

    assert not torch.cuda.is_available(), "the cpu variant must not see a GPU"


def round_trip_commands(sample: Path, rpc: Path, png: Path) -> list[list[str]]:
    """`reprocodec` arguments: encode under one profile, decode (verified) under another."""
    return [["encode", str(sample), "-o", str(rpc), "--local", "--profile", "cpu"],
            ["decode", str(rpc), "-o", str(png), "--local", "--profile", "cpu-nomkldnn"]]


def check_round_trip() -> None:
    sample = Path(str(files("reprocodec").joinpath("samples", "coffee.png")))
    reprocodec = Path(sys.executable).with_name("reprocodec")
    with tempfile.TemporaryDirectory() as tmp:
        # Numba's kernel cache goes to the temporary folder, not into the image.
        env = {**os.environ, "NUMBA_CACHE_DIR": tmp}
        rpc, png = Path(tmp, "coffee.rpc"), Path(tmp, "coffee.png")
        for args in round_trip_commands(sample, rpc, png):
            result = subprocess.run([str(reprocodec), *args], env=env, capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert png.stat().st_size > 0
        print(f"verify_install: {sample.name} -> {rpc.stat().st_size} B stream -> verified "
              f"decode under another profile")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("cpu", "cuda"):
        print("usage: python -P verify_install.py cpu|cuda", file=sys.stderr)
        return 2
    models = check_weights()
    print(f"verify_install: weights match their SHA-256: {', '.join(models)}")
    if argv[0] == "cpu":
        check_cpu_only()
        print("verify_install: no CUDA packages installed, torch sees no GPU")
    check_round_trip()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
