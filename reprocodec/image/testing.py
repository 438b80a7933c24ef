"""Small randomly initialised models in the shipped weights format, for tests and benches
that must not depend on the trained weights' numbers.

The file follows the shared spec exactly (fp16 float tensors, CDF tables computed by
`update(force=True)` after the fp16 rounding), so tests exercise the real loader path.
"""

from __future__ import annotations

import json
from pathlib import Path

from .models import sha256_file

# Checkerboard models: gain of entropy_parameters' last layer, which yields sigma and means.
EP_GAIN = 30.0


def write_random_model(
    weights_dir: str | Path,
    architecture: str = "bmshj2018-hyperprior",
    name: str | None = None,
    n: int = 16,
    m: int = 24,
    seed: int = 0,
    bounds: dict | None = None,
) -> str:
    """Write <name>.pt/.json into weights_dir; returns the model name."""
    import torch

    from .models import _model_class

    name = name or f"{architecture}-random{seed}"
    torch.manual_seed(seed)
    model = _model_class(architecture)(n, m).eval()
    with torch.no_grad():
        # A fresh init codes everything to zero (tiny y, sigma below the first table entry,
        # black output). Rescale the last layers so latents span several integers, sigma spans
        # the scale table, means span many grid points and pixels sit mid-range: then every
        # protected decision has elements near its thresholds, as with trained weights.
        model.g_a[-1].weight.mul_(20.0)
        h_s_last = [layer for layer in model.h_s if hasattr(layer, "weight")][-1]
        h_s_last.weight.mul_(60.0)
        h_s_last.bias.add_(1.0)
        model.g_s[-1].weight.mul_(5.0)
        model.g_s[-1].bias.fill_(0.5)
        if hasattr(model, "entropy_parameters"):  # checkerboard: the params come from here
            model.context_prediction.weight.mul_(4.0)
            last = model.entropy_parameters[-1]
            last.weight.mul_(EP_GAIN)
            last.bias.add_(1.0)
        for p in model.parameters():
            p.copy_(p.half().float())
    model.update(force=True)
    params = dict(model.named_parameters())
    # fp16 for parameters only: fixed buffers (scale_table, GDN pedestals) stay fp32.
    state = {k: (v.half() if k in params else v) for k, v in model.state_dict().items()}
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    pt = weights_dir / f"{name}.pt"
    torch.save({"architecture": architecture, "N": n, "M": m, "state_dict": state}, pt)
    meta = {
        "name": name, "architecture": architecture, "N": n, "M": m, "quality": 1,
        "lambda": 0.0, "weights_sha256": sha256_file(pt),
        "training": {"data": "none (random init)", "steps": 0, "seed": seed},
        "bounds": bounds or {},
    }
    (weights_dir / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return name


SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def sample_crop(name: str = "chelsea", height: int = 70, width: int = 90):
    """A crop of a committed sample photo (odd sizes on purpose: not multiples of 64)."""
    import numpy as np

    from .io import read_image

    pixels = read_image(SAMPLES / f"{name}.png")
    return np.ascontiguousarray(pixels[60 : 60 + height, 100 : 100 + width])


def write_test_models(weights_dir: str | Path) -> dict[str, str]:
    """Random bmshj / mbt models (fixed seeds), plus a bmshj with other weights."""
    return {
        "bmshj": write_random_model(weights_dir, "bmshj2018-hyperprior", seed=0),
        "mbt": write_random_model(weights_dir, "mbt2018-mean", seed=0),
        "other": write_random_model(weights_dir, "bmshj2018-hyperprior", seed=1),
    }


# -- cross-profile checks through the real CLI (tests/test_image_crossprofile.py and the
# checkerboard's): each profile is process-global, so every encode and decode is its own process.

def run_cli(args: list[str], weights: str | Path, timeout: float = 300):
    """`python -m reprocodec.cli ARGS` with REPROCODEC_WEIGHTS_DIR=weights (CompletedProcess)."""
    import os
    import subprocess
    import sys

    env = os.environ | {"REPROCODEC_WEIGHTS_DIR": str(weights)}
    return subprocess.run([sys.executable, "-m", "reprocodec.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_crossprofile_inputs(root: Path) -> list[str]:
    """Two RGB crops whose sizes are no multiple of 64 and one greyscale crop, as PNG files."""
    from .io import write_png

    inputs = []
    for i, (h, w) in enumerate([(70, 90), (33, 130)]):
        p = root / f"in{i}.png"
        write_png(p, sample_crop(height=h, width=w))
        inputs.append(str(p))
    grey = root / "grey.png"
    write_png(grey, sample_crop(height=50, width=40)[:, :, :1])
    inputs.append(str(grey))
    return inputs


def decode_matches_capture(streams: list[Path], capture: Path, out: Path, profile: str,
                           weights: str | Path) -> None:
    """Decode streams under profile via the CLI; every PNG must equal the encoder's captured
    output (`encode --capture`) byte for byte (AssertionError otherwise)."""
    import numpy as np
    from PIL import Image

    done = run_cli(["decode", *map(str, streams), "-o", str(out), "--local",
                    "--profile", profile], weights)
    assert done.returncode == 0, done.stderr
    for s in streams:
        enc = np.load(capture / f"{s.stem}.npz")["output"]
        got = np.asarray(Image.open(out / f"{s.stem}.png"))
        assert np.array_equal(got.reshape(enc.shape), enc), f"{s.stem} under {profile}"
