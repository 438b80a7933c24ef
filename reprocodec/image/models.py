"""Image model registry and loaders: shipped weights, official CompressAI checkpoints,
and in-memory models (tests, training).

Shipped weights (reprocodec/weights/<name>.pt + <name>.json, written by the training
command) carry CompressAI's integer CDF tables computed once at export, so encoder and decoder
use the identical tables from the file and never call `update()` at load: `update()` runs
float code whose result could differ between platforms.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprocodec.errors import InputError, UnknownModelError
from reprocodec.shipped import WEIGHTS_DIR, check_weights_hash, model_files, sha256_file

# compressai's import emits a torch.jit deprecation warning that is noise to CLI users.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

ARCHITECTURES = ("bmshj2018-hyperprior", "mbt2018-mean", "mbt2018-mean-checkerboard")
# Architectures whose y has means (the mean_grid decision) / a checkerboard context (two
# decoding passes, each with its own scale_index.* and mean_grid.* records: checkerboard.py).
MEAN_ARCHITECTURES = ("mbt2018-mean", "mbt2018-mean-checkerboard")
CHECKERBOARD_ARCHITECTURES = ("mbt2018-mean-checkerboard",)

# Error bounds used until `reprocodec calibrate` writes measured ones into a model's json:
# 100x the calibrator's floors. The decision networks run in float64, where two platforms
# differ by ~1e-13 relative, so even these cost next to nothing.
DEFAULT_BOUNDS: dict[str, dict[str, Any]] = {
    "scale_index": {"kind": "relative", "value": 1e-6},
    "mean_grid": {"kind": "absolute", "value": 1e-6},
    "pixels": {"kind": "absolute", "value": 1e-5},
}


@dataclass
class ModelInfo:
    name: str
    architecture: str
    quality: int
    weights_sha256: str
    bounds: dict[str, dict[str, Any]] = field(default_factory=dict)
    modes: tuple[str, ...] = ("none", "flags", "simplified", "syndrome")
    N: int = 0
    M: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def tensor_bound(self, tensor: str) -> dict[str, Any]:
        return self.bounds.get(tensor, DEFAULT_BOUNDS[tensor])


def _model_class(architecture: str) -> Any:
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior

    if architecture == "bmshj2018-hyperprior":
        return ScaleHyperprior
    if architecture == "mbt2018-mean":
        return MeanScaleHyperprior
    if architecture == "mbt2018-mean-checkerboard":
        from .checkerboard import MeanScaleCheckerboard

        return MeanScaleCheckerboard
    raise InputError(
        f"unsupported image architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}"
    )


def build_model(architecture: str, state_dict: dict[str, Any]) -> Any:
    """A CompressAI model sized from the tensors (N from g_a.0, M from g_a.6) in eval mode."""
    try:
        n = int(state_dict["g_a.0.weight"].shape[0])
        m = int(state_dict["g_a.6.weight"].shape[0])
    except KeyError as exc:
        raise InputError(
            f"checkpoint lacks {exc.args[0]}: not a {architecture} state_dict"
        ) from exc
    net = _model_class(architecture)(n, m)
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise InputError(
            f"checkpoint does not fit {architecture} (N={n}, M={m}): {str(exc)[:300]}"
        ) from exc
    return net.eval()


def _to_float32(state_dict: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {
        k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in state_dict.items()
    }


def list_model_files(weights_dir: Path | None = None) -> list[Path]:
    weights_dir = weights_dir or WEIGHTS_DIR
    return sorted(p for p in weights_dir.glob("*.json") if p.with_suffix(".pt").exists())


def read_info(json_path: Path) -> ModelInfo:
    meta = json.loads(json_path.read_text())
    if meta.get("architecture") not in ARCHITECTURES:
        raise UnknownModelError(f"{json_path.name}: not an image model")
    return ModelInfo(
        name=meta["name"],
        architecture=meta["architecture"],
        quality=int(meta.get("quality", 0)),
        weights_sha256=meta["weights_sha256"],
        bounds=dict(meta.get("bounds", {})),
        N=int(meta.get("N", 0)),
        M=int(meta.get("M", 0)),
        metadata=meta,
    )


def list_models(weights_dir: Path | None = None) -> list[ModelInfo]:
    """Shipped image models, ordered by architecture then quality."""
    infos = []
    for p in list_model_files(weights_dir):
        try:
            infos.append(read_info(p))
        except UnknownModelError:
            continue  # a point-cloud model beside ours
    return sorted(infos, key=lambda i: (i.architecture, i.quality, i.name))


def resolve_model_name(
    model: str | None, quality: int | None, weights_dir: Path | None = None
) -> str:
    """--model / --quality to a shipped name: default bmshj2018-hyperprior, highest quality."""
    infos = list_models(weights_dir)
    if model and any(i.name == model for i in infos):
        if quality is not None:
            raise InputError("give either --model NAME-qN or --model ARCH --quality N, not both")
        return model
    arch = model or "bmshj2018-hyperprior"
    cands = [i for i in infos if i.architecture == arch]
    if not cands:
        known = ", ".join(i.name for i in infos) or "none shipped"
        raise UnknownModelError(f"unknown image model {model!r}; available: {known}")
    if quality is None:
        return cands[-1].name
    for i in cands:
        if i.quality == quality:
            return i.name
    qs = ", ".join(str(i.quality) for i in cands)
    raise UnknownModelError(f"{arch} has no quality {quality}; available qualities: {qs}")


def load_shipped(name: str, weights_dir: Path | None = None) -> tuple[Any, ModelInfo]:
    """(model, info) for a shipped model; verifies the file's SHA-256 against its json."""
    import torch

    weights_dir = weights_dir or WEIGHTS_DIR
    json_path, pt_path = model_files(name, weights_dir, "image",
                                     lambda: [i.name for i in list_models(weights_dir)])
    info = read_info(json_path)
    check_weights_hash(pt_path, info.weights_sha256)
    blob = torch.load(pt_path, map_location="cpu", weights_only=True)
    model = build_model(blob["architecture"], _to_float32(blob["state_dict"]))
    return model, info


def import_checkpoint(path: str | Path, architecture: str, name: str, quality: int = 0,
                      out_dir: Path | None = None) -> ModelInfo:
    """Bring an official CompressAI checkpoint (a state_dict, optionally wrapped in
    {"state_dict"}, before or after its `update()`) into the shipped form, once: parameters
    rounded through fp16, then the integer CDF tables computed from exactly those (the only
    `update()` in reprocodec's codec paths), written as out_dir/NAME.pt + NAME.json with the
    file's SHA-256 and default bounds until `reprocodec calibrate` measures them. Encoders and
    decoders then load it like any shipped model and never recompute a table."""
    import torch

    from reprocodec.train.export import load_shipped as load_exported
    from reprocodec.train.export import round_through_fp16, shipped_state_dict

    path = Path(path)
    out_dir = Path(out_dir or WEIGHTS_DIR)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise InputError(f"{path} is not a readable torch checkpoint: {exc}") from exc
    state_dict = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state_dict, dict):
        raise InputError(f"{path} does not contain a state_dict")
    model = _build_with_empty_tables(architecture, _to_float32(state_dict))
    round_through_fp16(model)
    model.update(force=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    pt_path = out_dir / f"{name}.pt"
    torch.save({"architecture": architecture, "N": int(model.N), "M": int(model.M),
                "state_dict": shipped_state_dict(model)}, pt_path)
    reloaded = load_exported(pt_path).state_dict()
    for key, value in model.state_dict().items():
        if not torch.equal(reloaded[key], value):
            raise InputError(f"imported {key} does not round-trip; {pt_path} not usable")
    meta = {"name": name, "architecture": architecture, "N": int(model.N), "M": int(model.M),
            "quality": quality, "weights_sha256": sha256_file(pt_path),
            "imported_from": {"file": path.name, "sha256": sha256_file(path)}, "bounds": {}}
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return read_info(out_dir / f"{name}.json")


def _build_with_empty_tables(architecture: str, state_dict: dict[str, Any]) -> Any:
    """Checkpoints saved before `update()` lack the CDF buffers; give them empty ones so the
    state_dict loads (the caller computes every table once)."""
    import torch

    state_dict = dict(state_dict)
    for module in ("entropy_bottleneck", "gaussian_conditional"):
        for buf in ("_quantized_cdf", "_offset", "_cdf_length"):
            state_dict.setdefault(f"{module}.{buf}", torch.zeros(0, dtype=torch.int32))
    state_dict.setdefault("gaussian_conditional.scale_table", torch.zeros(0))
    state_dict.setdefault("gaussian_conditional.scale_bound", torch.tensor([0.11]))
    return build_model(architecture, state_dict)
