"""Train every shipped image model in one job: ``python -m reprocodec.train.schedule``.

One base bmshj2018-hyperprior at a middle lambda from scratch, then fine-tuned copies at a lower
and a higher lambda, then an mbt2018-mean whose analysis/synthesis transforms (and hyper-analysis
and entropy bottleneck, which have the same shapes) start from the base. Each model is exported to
reprocodec/weights/ as soon as it finishes, so usable weights exist early. Every stage resumes from
its checkpoint, so rerunning the command after an interruption continues where it stopped.
Lambdas 0.0025 / 0.013 / 0.032 put the three bmshj models near 0.23 / 0.61 / 0.9 bpp on Kodak.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

from reprocodec.train.export import export, training_data_description
from reprocodec.train.train import TrainConfig, train


def stages(scale: float, minutes: float) -> list[tuple[TrainConfig, str, int]]:
    """(config, shipped name, quality rank) in training order.

    scale multiplies every stage's step cap; minutes (> 0) gives the stages wall-clock budgets
    instead (shares 0.1 base, 0.45 q2, 0.225 per fine-tune, 0.45 mbt: the mbt stage is meant to
    run as a second process beside the bmshj chain, ``--only mbt2018-mean-q1``, once the base
    has a checkpoint).
    """
    def steps(n: int) -> int:
        return max(1, round(n * scale))

    def budget(share: float) -> float:
        return share * minutes * 60 if minutes > 0 else 0.0

    # N=64, M=128, one thread per process, channels-last + bf16 transforms: on this 2-core CPU,
    # 100 ms per step, and two processes side by side train twice as much as one with two
    # threads. The shipped weights followed exactly this chain (each json's "lineage"): a base
    # from scratch (fp32, 4,800 steps), continued at lambda 0.013 (q2), forked at step 15,547
    # into q1 and q3, and an mbt2018-mean whose transforms start from the base.
    # (lr_decay_at = the recorded decay step / steps of each stage.)
    base = TrainConfig(name="bmshj-l0130", N=64, M=128, lmbda=0.013, steps=steps(4800),
                       lr=5e-4, lr_decay_at=0.357, threads=1, budget_s=budget(0.1),
                       precision="fp32", channels_last=False)
    base_ckpt = f"{base.runs}/{base.name}/checkpoint.pt"
    fast = dict(precision="bf16", channels_last=True)
    q2 = replace(base, name="bmshj-q2-v2", steps=steps(27378), lr=2e-4, lr_decay_at=0.376,
                 init=base_ckpt, budget_s=budget(0.45), **fast)
    fork = f"{base.runs}/snap/q2-15547.pt"  # q2's checkpoint at step 15,547 (copied when reached)
    tune = dict(lr=1.5e-4, lr_decay_at=0.6, init=fork, budget_s=budget(0.225), **fast)
    return [
        (base, "", 0),
        (q2, "bmshj2018-hyperprior-q2", 2),
        (replace(base, name="bmshj-q1-v2", lmbda=0.0025, steps=steps(11144), **tune),
         "bmshj2018-hyperprior-q1", 1),
        (replace(base, name="bmshj-q3-v2", lmbda=0.032, steps=steps(22067), **tune),
         "bmshj2018-hyperprior-q3", 3),
        (replace(base, name="mbt-q1-v2", arch="mbt2018-mean", lmbda=0.013, steps=steps(26032),
                 lr=3e-4, lr_decay_at=0.32, init=base_ckpt, budget_s=budget(0.45), **fast),
         "mbt2018-mean-q1", 1),
    ]


def continuation(minutes: float) -> list[tuple[TrainConfig, str, int]]:
    """Chain v3: continue from the shipped weights (``--chain v3``).

    Two new rate points first, fine-tuned from the neighbouring shipped model (lambda
    0.0012 then 0.0007 from q1 for about 0.08 bpp, 0.08 from q3 for about 1.2 bpp), then the
    three shipped bmshj models continued at their own lambdas on 256 px patches (batch 4: the
    same pixels per step, more context for the hyperprior), then the checkerboard model from
    the shipped mbt2018-mean-q1. Budgets are shares of ``minutes``. The shipped names are
    ranked by rate afterwards (the v2 names q1/q2/q3 were continued into q2/q3 and, v2's q3
    not continued, q4; low and high became q1 and q5): each json records its v3 name as
    ``renamed_from`` and the whole chain in ``training.lineage``. In the 140-minute run the
    q3 stage was stopped at its start and the checkerboard stage ran beside the chain
    (``--only mbt2018-mean-checkerboard-q1`` as a second process, 1,980 s).
    """
    def budget(share: float) -> float:
        return share * minutes * 60

    shipped = "reprocodec/weights/bmshj2018-hyperprior-q{}.pt".format
    tune = dict(N=64, M=128, lr=1e-4, lr_decay_at=0.7, threads=1, precision="bf16",
                channels_last=True)
    long = dict(tune, patch=256, batch=4, lr=5e-5)
    # At lr 1e-4 the first low-rate stage moved the rate only from 0.24 to 0.20 training bpp in
    # 25 minutes, so it continues at a lower lambda and 3x the learning rate, and the
    # high-rate fine-tune starts at that learning rate.
    fast_tune = dict(tune, lr=3e-4)
    return [
        (TrainConfig(name="bmshj-low-v3", lmbda=0.0012, steps=100_000, init=shipped(1),
                     budget_s=budget(0.18), **tune), "", 0),
        (TrainConfig(name="bmshj-low2-v3", lmbda=0.0007, steps=100_000,
                     init="runs/bmshj-low-v3/checkpoint.pt", budget_s=budget(0.1), **fast_tune),
         "bmshj2018-hyperprior-low", 0),
        (TrainConfig(name="bmshj-high-v3", lmbda=0.08, steps=100_000, init=shipped(3),
                     budget_s=budget(0.18), **fast_tune), "bmshj2018-hyperprior-high", 4),
        (TrainConfig(name="bmshj-q2-v3", lmbda=0.013, steps=100_000, init=shipped(2),
                     budget_s=budget(0.2), **long), "bmshj2018-hyperprior-q2", 2),
        (TrainConfig(name="bmshj-q1-v3", lmbda=0.0025, steps=100_000, init=shipped(1),
                     budget_s=budget(0.17), **long), "bmshj2018-hyperprior-q1", 1),
        (TrainConfig(name="bmshj-q3-v3", lmbda=0.032, steps=100_000, init=shipped(3),
                     budget_s=budget(0.17), **long), "bmshj2018-hyperprior-q3", 3),
        # The context layers start from scratch, so 3x the learning rate of the fine-tunes.
        (TrainConfig(name="mbt-cb-v3", arch="mbt2018-mean-checkerboard", lmbda=0.013,
                     steps=100_000, init="reprocodec/weights/mbt2018-mean-q1.pt",
                     budget_s=1980.0, **dict(tune, lr=3e-4)),
         "mbt2018-mean-checkerboard-q1", 1),
    ]


def checkerboard_rates(minutes: float) -> list[tuple[TrainConfig, str, int]]:
    """Chain v4: the checkerboard model at a lower and a higher rate (``--chain v4``).

    The checkerboard context is the best model per rate (+0.7 dB over its mbt parent at 0.6
    bpp), so it is fine-tuned from the shipped checkerboard weights at lambda 0.0035 (about 0.3
    bpp) and 0.04 (about 1.0 bpp). Step caps, not wall-clock budgets: the job runs at the lowest
    CPU priority beside other work and may be paused for benchmarks. Shipped names, ranked by
    rate: the low stage became mbt2018-mean-checkerboard-q1 and the model it started from
    (v3's q1) was renamed q2 (its weights unchanged, so its streams still decode); the high
    stage, stopped at its start in the first run, would be q3.
    """
    del minutes  # step caps only
    cb = dict(arch="mbt2018-mean-checkerboard", N=64, M=128, lr=3e-4, lr_decay_at=0.7,
              threads=1, precision="bf16", channels_last=True, steps=12_000,
              init="reprocodec/weights/mbt2018-mean-checkerboard-q2.pt")
    return [
        (TrainConfig(name="mbt-cb-low-v4", lmbda=0.0035, **cb),
         "mbt2018-mean-checkerboard-low", 0),
        (TrainConfig(name="mbt-cb-high-v4", lmbda=0.04, **cb),
         "mbt2018-mean-checkerboard-high", 2),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="wall-clock training budget for all stages (0 = step caps only)")
    ap.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="run only these shipped names")
    ap.add_argument("--chain", choices=("v2", "v3", "v4"), default="v2",
                    help="v2: the shipped weights' chain from scratch; v3: continue from them; "
                         "v4: the checkerboard model at two more rates")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="export here instead of reprocodec/weights (evaluate before shipping)")
    args = ap.parse_args(argv)
    data_desc = training_data_description()
    chain = {"v2": lambda: stages(args.scale, args.minutes),
             "v3": lambda: continuation(args.minutes or 150),
             "v4": lambda: checkerboard_rates(args.minutes)}[args.chain]()
    for cfg, name, quality in chain:
        if args.only and name not in args.only:
            continue
        cfg = replace(cfg, device=args.device, threads=args.threads)
        t0 = time.time()
        if cfg.init and not Path(cfg.init).exists() and cfg.init.endswith("q2-15547.pt"):
            # The fork point: q2's checkpoint once it passed step 15,547 (saves every 200 steps;
            # a rerun from q2's final checkpoint forks later, which only helps).
            Path(cfg.init).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f"{cfg.runs}/bmshj-q2-v2/checkpoint.pt", cfg.init)
        result = train(cfg, log=lambda s: print(s, flush=True))
        if not name:  # the base is only a starting point
            continue
        out = {"out_dir": args.out_dir} if args.out_dir else {}
        meta = export(Path(result["checkpoint"]), name, quality,
                      extra={"training_data": data_desc}, **out)
        print(f"[schedule] exported {name} ({result['steps']} steps, "
              f"{time.time() - t0:.0f}s this stage) sha256 {meta['weights_sha256'][:12]}",
              flush=True)


if __name__ == "__main__":
    main()
