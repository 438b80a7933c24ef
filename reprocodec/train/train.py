"""Train one image codec: ``python -m reprocodec.train.train --arch A --lambda L --steps S``.

As CompressAI's examples/train.py: RateDistortionLoss (MSE), Adam on the main parameters and a
separate Adam on the entropy bottleneck's quantiles (the aux loss), gradient clipping at 1.0.
Differences, for a few thousand steps on a CPU: a higher learning rate with one step decay
(``--lr-decay-at``), patches held in memory (random crop + flips from ``data/train/patches.npy``)
and a seeded torch.Generator, so the same command reproduces the same run on the same machine.
Checkpoints (``runs/<name>/checkpoint.pt``) are written every ``--save-every`` steps and a rerun
resumes from them; ``--init`` starts from another run's weights (fine-tuning to a new lambda, or
copying the transforms shared by two architectures).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from compressai.entropy_models import EntropyModel
from compressai.losses import RateDistortionLoss

from reprocodec.train.models import build_model


@dataclass
class TrainConfig:
    name: str
    arch: str = "bmshj2018-hyperprior"
    N: int = 128
    M: int = 192
    lmbda: float = 0.013
    steps: int = 1000
    patch: int = 128
    batch: int = 8
    lr: float = 5e-4
    lr_decay_at: float = 0.75  # fraction of steps (or of budget_s) after which lr drops 5x
    budget_s: float = 0.0  # >0: also stop after this many training seconds (shared CPU)
    aux_lr: float = 1e-3
    seed: int = 0
    data: str = "data/train/patches.npy"
    init: str = ""  # checkpoint to start from ("" = from scratch)
    runs: str = "runs"
    save_every: int = 200
    log_every: int = 50
    threads: int = 2
    device: str = "cpu"  # "cuda" trains far faster; export and CDFs are computed on CPU anyway
    # bf16: the four transforms run under autocast, the entropy models in fp32 (see
    # mixed_precision). Measured on this 2-core CPU (N=64, M=128, batch 8, 128 px): 322 ms/step
    # fp32, 174 ms channels-last, 100 ms channels-last + bf16.
    precision: str = "bf16"
    channels_last: bool = True


class PatchSampler:
    """Random crops with flips from an in-memory uint8 array, driven by one seeded generator."""

    def __init__(self, patches: np.ndarray, patch: int, batch: int, seed: int):
        if patches.ndim != 4 or patches.shape[-1] != 3 or min(patches.shape[1:3]) < patch:
            raise ValueError(f"need K x H x W x 3 patches of at least {patch}px, got "
                             f"{patches.shape}")
        self.data = torch.from_numpy(np.ascontiguousarray(patches))
        self.patch, self.batch = patch, batch
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        k, h, w, _ = self.data.shape
        p = self.patch
        idx = torch.randint(k, (self.batch,), generator=self.gen)
        ys = torch.randint(h - p + 1, (self.batch,), generator=self.gen)
        xs = torch.randint(w - p + 1, (self.batch,), generator=self.gen)
        flips = torch.randint(2, (self.batch, 2), generator=self.gen)
        out = []
        for i in range(self.batch):
            crop = self.data[idx[i], ys[i] : ys[i] + p, xs[i] : xs[i] + p].permute(2, 0, 1)
            if flips[i, 0]:
                crop = crop.flip(2)
            if flips[i, 1]:
                crop = crop.flip(1)
            out.append(crop)
        return torch.stack(out).float().div_(255.0)

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)


def split_parameters(model: torch.nn.Module):
    """Main parameters vs. the entropy bottleneck quantiles (trained only by the aux loss)."""
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    return main, aux


def load_init(model: torch.nn.Module, path: str) -> tuple[list[str], int]:
    """Copy every tensor whose name and shape match from a checkpoint.

    Returns the copied names and the source checkpoint's step (recorded for reproducibility).
    """
    ck = torch.load(path, map_location="cpu", weights_only=False)
    # A training checkpoint holds "model"; a shipped reprocodec/weights/NAME.pt holds
    # "state_dict" (fp16 parameters), which continues training from what users have now.
    src = ck["model"] if "model" in ck else {
        k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    own = model.state_dict()
    copied = [k for k, v in src.items() if k in own and own[k].shape == v.shape
              and not k.endswith(("_quantized_cdf", "_offset", "_cdf_length"))]
    own.update({k: src[k] for k in copied})
    model.load_state_dict(own, strict=False)
    return copied, int(ck.get("step", 0))


def mixed_precision(model: torch.nn.Module, device_type: str) -> None:
    """Run the model under bf16 autocast except its entropy models, which stay fp32.

    The transforms (convolutions and GDN) tolerate bf16 like any conv net; the likelihoods
    (erfc of y/sigma, the bottleneck's logistic CDF differences) are where the rate estimate
    lives and would lose it at 8 mantissa bits, so their inputs are cast back to fp32 and
    autocast is switched off inside. Only training uses this: export, calibration and every
    codec path run the plain fp32 model.
    """
    for module in model.modules():
        if not isinstance(module, EntropyModel):
            continue
        forward = module.forward

        def fp32_forward(*args, _forward=forward, **kwargs):
            def f(v):
                return v.float() if torch.is_tensor(v) and v.is_floating_point() else v
            with torch.autocast(device_type, enabled=False):
                return _forward(*map(f, args), **{k: f(v) for k, v in kwargs.items()})

        module.forward = fp32_forward  # type: ignore[method-assign]


def psnr_from_mse(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train(cfg: TrainConfig, log=print) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.runs) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"

    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
    model = build_model(cfg.arch, cfg.N, cfg.M).to(cfg.device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if cfg.precision == "bf16":
        mixed_precision(model, torch.device(cfg.device).type)
    autocast = torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16,
                              enabled=cfg.precision == "bf16")
    main_params, aux_params = split_parameters(model)
    opt = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=cfg.aux_lr)
    criterion = RateDistortionLoss(lmbda=cfg.lmbda)
    sampler = PatchSampler(np.load(cfg.data), cfg.patch, cfg.batch, cfg.seed)

    step, seconds, history, decay_step, init_step = 0, 0.0, [], None, None
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"], strict=False)
        opt.load_state_dict(ck["opt"])  # moves the state onto the parameters' device
        aux_opt.load_state_dict(ck["aux_opt"])
        sampler.set_state(ck["sampler"])
        torch.set_rng_state(ck["torch_rng"])
        step, seconds, history = ck["step"], ck["seconds"], ck["history"]
        decay_step, init_step = ck.get("decay_step"), ck.get("init_step")
        log(f"[{cfg.name}] resumed at step {step}")
    elif cfg.init:
        copied, init_step = load_init(model, cfg.init)
        log(f"[{cfg.name}] initialised {len(copied)} tensors from {cfg.init} (step {init_step})")

    def save(final: bool = False) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        weights = {k: v.cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save({"model": weights, "opt": opt.state_dict(),
                    "aux_opt": aux_opt.state_dict(), "sampler": sampler.state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "seconds": seconds,
                    "history": history, "config": asdict(cfg), "final": final,
                    "decay_step": decay_step, "init_step": init_step}, tmp)
        tmp.replace(ckpt_path)

    model.train()
    acc = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "aux": 0.0, "n": 0}
    t0 = time.time()
    bad_steps = 0

    def elapsed() -> float:
        return seconds + time.time() - t0

    # On a shared CPU a step budget says little about wall-clock, so a run may instead be given
    # seconds; the step at which lr decayed is recorded so the run can be replayed by steps.
    def out_of_time() -> bool:
        return cfg.budget_s > 0 and elapsed() >= cfg.budget_s

    while step < cfg.steps and not out_of_time():
        if decay_step is None and (step >= cfg.lr_decay_at * cfg.steps or (
                cfg.budget_s > 0 and elapsed() >= cfg.lr_decay_at * cfg.budget_s)):
            decay_step = step
            log(f"[{cfg.name}] lr decays to {cfg.lr / 5:.1e} at step {step}")
        lr = cfg.lr if decay_step is None else cfg.lr / 5
        for g in opt.param_groups:
            g["lr"] = lr
        x = sampler.next().to(cfg.device).contiguous(memory_format=memory_format)
        opt.zero_grad()
        aux_opt.zero_grad()
        with autocast:
            out = model(x)
        out["x_hat"] = out["x_hat"].float()
        losses = criterion(out, x)
        if not torch.isfinite(losses["loss"]):
            # GDN can blow up at high learning rates: skip the batch rather than poison Adam.
            bad_steps += 1
            if bad_steps > 20:
                raise FloatingPointError(f"[{cfg.name}] loss is {losses['loss']} at step {step};"
                                         " lower --lr and resume from the last checkpoint")
            continue
        bad_steps = 0
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        if not torch.isfinite(grad_norm):
            continue
        opt.step()
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_opt.step()
        step += 1
        acc["loss"] += losses["loss"].item()
        acc["bpp"] += losses["bpp_loss"].item()
        acc["mse"] += losses["mse_loss"].item()
        acc["aux"] += aux_loss.item()
        acc["n"] += 1
        finished = step == cfg.steps or out_of_time()
        if step % cfg.log_every == 0 or finished:
            n = acc["n"]
            now = time.time()
            seconds += now - t0
            t0 = now
            entry = {"step": step, "loss": acc["loss"] / n, "bpp": acc["bpp"] / n,
                     "psnr": psnr_from_mse(acc["mse"] / n), "aux": acc["aux"] / n, "lr": lr,
                     "seconds": round(seconds, 1)}
            history.append(entry)
            log(f"[{cfg.name}] step {step}/{cfg.steps} loss {entry['loss']:.4f} "
                f"bpp {entry['bpp']:.3f} psnr {entry['psnr']:.2f} aux {entry['aux']:.1f} "
                f"lr {lr:.1e} {seconds:.0f}s")
            acc = dict.fromkeys(acc, 0.0)
            acc["n"] = 0
        if step % cfg.save_every == 0 or finished:
            save(final=finished)
    return {"checkpoint": str(ckpt_path), "steps": step, "seconds": round(seconds, 1),
            "final_loss": history[-1]["loss"] if history else None, "history": history}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = TrainConfig(name="")
    ap.add_argument("--name", required=True, help="run name (runs/<name>/checkpoint.pt)")
    ap.add_argument("--arch", default=d.arch)
    ap.add_argument("--N", type=int, default=d.N)
    ap.add_argument("--M", type=int, default=d.M)
    ap.add_argument("--lambda", dest="lmbda", type=float, default=d.lmbda)
    for field in ("steps", "patch", "batch", "seed", "save_every", "log_every", "threads"):
        ap.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(d, field))
    for field in ("lr", "lr_decay_at", "aux_lr", "budget_s"):
        ap.add_argument(f"--{field.replace('_', '-')}", type=float, default=getattr(d, field))
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    for field in ("data", "init", "runs", "device", "precision"):
        ap.add_argument(f"--{field}", default=getattr(d, field))
    return TrainConfig(**vars(ap.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    result = train(parse_args(argv), log=lambda s: print(s, flush=True))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


if __name__ == "__main__":
    main()
