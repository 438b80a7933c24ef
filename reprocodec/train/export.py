"""Export a training checkpoint as shipped weights (the shared weights format).

``python -m reprocodec.train.export --checkpoint runs/X/checkpoint.pt --name NAME --quality Q``
writes ``reprocodec/weights/NAME.pt`` and ``NAME.json``.

Order matters for bit-exactness: the learned parameters are rounded through fp16 FIRST, and only
then ``update(force=True)`` computes the integer CDF tables from the rounded model. The file holds
the fp16 parameters, the fp32 fixed buffers (GDN pedestals, scale_table: they do not survive fp16)
and the integer CDF buffers, so encoder and decoder both load exactly the model the CDFs were
computed from and never call update() themselves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from reprocodec.shipped import sha256_file
from reprocodec.train.models import build_model

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


def refine_quantiles(model: torch.nn.Module, steps: int, lr: float = 1e-2) -> float:
    """Finish fitting the entropy bottleneck quantiles (aux loss only: cheap, no images)."""
    quantiles = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(quantiles, lr=lr)
    loss = model.aux_loss()
    for _ in range(steps):
        opt.zero_grad()
        loss = model.aux_loss()
        loss.backward()
        opt.step()
    return float(model.aux_loss().detach())


def shipped_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp16 for learned float parameters; fixed buffers and CDF tables keep their dtype."""
    params = {n for n, _ in model.named_parameters()}
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        out[k] = v.half() if k in params and v.is_floating_point() else v
    return out


def round_through_fp16(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def load_shipped(path: Path) -> torch.nn.Module:
    """Load a shipped .pt into its architecture exactly as a codec would (no update())."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(blob["architecture"], blob["N"], blob["M"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    model.load_state_dict(state)
    return model.eval()


def training_data_description(manifest: Path = Path("data/train/manifest.json")) -> str:
    """What the prepared training set is (written by reprocodec.train.data), for the metadata."""
    return json.loads(manifest.read_text())["description"] if manifest.exists() else ""


def lineage(checkpoint: Path) -> list[dict]:
    """The training stages behind a checkpoint, oldest first: each run's settings and steps,
    following `init` (the checkpoint a run started from) while those files exist."""
    stages: list[dict] = []
    path: Path | None = checkpoint
    while path is not None and path.exists() and len(stages) < 16:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if "config" not in ck:  # a shipped model: its own json holds the stages before it
            meta = path.with_suffix(".json")
            before = json.loads(meta.read_text()) if meta.exists() else {}
            shipped = [{"shipped": path.name, "weights_sha256": sha256_file(path)}]
            return before.get("training", {}).get("lineage", []) + shipped + stages[::-1]
        cfg = ck["config"]
        stages.append({
            "run": cfg["name"], "architecture": cfg["arch"], "lambda": cfg["lmbda"],
            "steps": ck["step"], "init_step": ck.get("init_step"), "lr": cfg["lr"],
            "lr_decay_step": ck.get("decay_step"), "batch": cfg["batch"], "patch": cfg["patch"],
            "precision": cfg.get("precision", "fp32"), "seconds": round(ck["seconds"], 1),
        })
        path = Path(cfg["init"]) if cfg.get("init") else None
    return stages[::-1]


def export(checkpoint: Path, name: str, quality: int, out_dir: Path = WEIGHTS_DIR,
           aux_steps: int = 2000, extra: dict | None = None) -> dict:
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = build_model(cfg["arch"], cfg["N"], cfg["M"])
    model.load_state_dict(ck["model"], strict=False)
    model.eval()
    aux = refine_quantiles(model, aux_steps) if aux_steps else float(model.aux_loss().detach())
    round_through_fp16(model)
    model.update(force=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    pt_path = out_dir / f"{name}.pt"
    torch.save({"architecture": cfg["arch"], "N": cfg["N"], "M": cfg["M"],
                "state_dict": shipped_state_dict(model)}, pt_path)
    # Check the file reproduces the model the CDFs were computed from, bit for bit.
    reloaded = load_shipped(pt_path).state_dict()
    for k, v in model.state_dict().items():
        if not torch.equal(reloaded[k], v):
            raise RuntimeError(f"exported {k} does not round-trip; refusing to ship {pt_path}")
    hist = ck.get("history") or [{}]
    meta = {
        "name": name, "architecture": cfg["arch"], "N": cfg["N"], "M": cfg["M"],
        "quality": quality, "lambda": cfg["lmbda"], "weights_sha256": sha256_file(pt_path),
        "training": {
            "data": cfg["data"], "steps": ck["step"], "patch": cfg["patch"],
            "batch": cfg["batch"], "lr": cfg["lr"], "lr_decay_at": cfg["lr_decay_at"],
            "seed": cfg["seed"], "init": cfg["init"], "init_step": ck.get("init_step"),
            "lr_decay_step": ck.get("decay_step"), "threads": cfg["threads"],
            "seconds": ck["seconds"],
            "final_loss": hist[-1].get("loss"), "final_train_bpp": hist[-1].get("bpp"),
            "final_train_psnr": hist[-1].get("psnr"), "aux_loss": aux,
            "precision": cfg.get("precision", "fp32"),
            "lineage": lineage(checkpoint),
        },
        "bounds": {},
    }
    if extra:
        meta.update(extra)
    json_path = out_dir / f"{name}.json"
    old = json.loads(json_path.read_text()) if json_path.exists() else {}
    if old.get("bounds"):  # calibration results belong to weights; stale once weights change
        meta["stale_bounds_from"] = old.get("weights_sha256")
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--quality", type=int, required=True)
    ap.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--aux-steps", type=int, default=2000)
    args = ap.parse_args(argv)
    meta = export(args.checkpoint, args.name, args.quality, args.out_dir, args.aux_steps,
                  extra={"training_data": training_data_description()})
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
