"""Train the occupancy model and ship it as reprocodec/weights/<name>.pt + .json:

    nice python -m reprocodec.train.pointcloud_train --data data/pc --name octree-ctx-v2 \
        --hidden 64,32 --sparse 0.2 --epochs 3 --max-seconds 1500

(the defaults: octree-ctx-v2, ~14 min on one thread of a shared 2-core CPU, most of it making
the samples; octree-ctx-v1 was --hidden 128,128 --epochs 3 --sparse 0 --first-layer float.)
octree-ctx-v3 adds the depth-10 clouds re-voxelized at depths 6-8 (what small clouds and the
shipped samples look like), 2.7x the fine-level samples and ~16x the steps (~51 min):

    python -m reprocodec.train.pointcloud_train --data data/pc --name octree-ctx-v3 \
        --hidden 64,32 --sparse 0.2 --coarse 6,7,8 --keep 0.4 --batch 4096 --lr 0.003 \
        --epochs 100 --steps 340000 --max-seconds 3900

Samples are the (features, bit) pairs the codec itself codes, taken from the training clouds
of `python -m reprocodec.train.pointcloud_data`; fine levels are subsampled to keep memory small.
Runs on CPU with one thread (the machine is shared). The error bound is calibrated afterwards
by `reprocodec calibrate --model NAME --inputs CLOUDS`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reprocodec.pointcloud import octree
from reprocodec.pointcloud.context import N_FEATURES, N_PASSES, pass_features
from reprocodec.pointcloud.networks import OccupancyMLP, gather_bits, load_weights, save_weights
from reprocodec.pointcloud.ply import read_ply

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def cloud_samples(voxels: np.ndarray, depth: int, keep: float, rng: np.random.Generator):
    """Packed features and bits of every coded bit of one cloud (fine levels subsampled)."""
    codes, bits = octree.build_levels(voxels, depth)
    feats, targets = [], []
    for level in range(depth):
        neighbours = octree.neighbour_table(codes[level], level)
        m = codes[level].size
        rows = np.arange(m) if m * N_PASSES < 20000 else np.flatnonzero(rng.random(m) < keep)
        if rows.size == 0:
            continue
        for k in range(N_PASSES):
            f = pass_features(neighbours[rows], bits[level], k, level, depth)
            feats.append(np.packbits(f, axis=1))
            targets.append(bits[level][rows, k])
    return np.concatenate(feats), np.concatenate(targets)


def fine_keep(depth: int, keep: float) -> float:
    """Fraction of fine-level nodes kept at this depth: `keep` at depth 9, 4x less per depth
    above (a surface has ~4x the nodes per level), all of them at coarse depths."""
    return min(1.0, keep * 4.0 ** (9 - depth))


def coarse_clouds(voxels: np.ndarray, depth: int,
                  coarse: list[int]) -> list[tuple[np.ndarray, int]]:
    """The cloud re-voxelized at each coarser depth (coordinates >> shift, duplicates removed):
    what users code at depths 6-8 looks unlike a depth-9/10 surface (thicker, denser)."""
    return [(octree.sort_voxels(np.unique(voxels >> (depth - d), axis=0)), d)
            for d in coarse if d < depth]


def sparse_variants(voxels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Sparser and partial versions of a dense cloud (data preparation; a fixed seed): 1/4
    and 1/16 random samplings and the half seen from a random direction."""
    view = rng.normal(size=3)
    centred = voxels - voxels.mean(axis=0)
    return [voxels[rng.random(voxels.shape[0]) < 0.25],
            voxels[rng.random(voxels.shape[0]) < 1 / 16],
            voxels[centred @ view > 0]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="data/pc")
    ap.add_argument("--name", default="octree-ctx-v2")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--hidden", default="64,32")
    ap.add_argument("--keep", type=float, default=0.15, help="fraction of fine-level nodes kept")
    ap.add_argument("--depths", default="9,10")
    ap.add_argument("--coarse", default="",
                    help="also train on the clouds of the finest --depths re-voxelized at these "
                         "coarser depths (e.g. 6,7,8), with their sparse variants")
    ap.add_argument("--coarse-exclude", default="camel",
                    help="meshes left out of --coarse (camel: the shipped camel_d6 sample is "
                         "that mesh at depth 6, a benchmark row)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0,
                    help="at most this many steps (the learning-rate schedule spans them)")
    ap.add_argument("--init", help="start from these weights (.pt) instead of at random")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-seconds", type=float, default=1500)
    ap.add_argument("--sparse", type=float, default=0.2,
                    help="also train on sparse variants of each cloud (1/4 and 1/16 random "
                         "samplings, a one-sided partial view), their fine levels kept at this "
                         "fraction of --keep: the model then sees clouds unlike closed meshes")
    ap.add_argument("--first-layer", choices=["float", "gather"], default="gather",
                    help="gather: the codec runs the first layer as exact integer table sums "
                         "(networks.GatherNetworks; octree-ctx-v2 on), float: as v1")
    ap.add_argument("--from-weights", help="no training: re-ship this .pt (its .json beside it "
                    "gives the training record) under --name with --first-layer")
    args = ap.parse_args(argv)
    if args.from_weights:
        model, _, _ = load_weights(args.from_weights)
        record = json.loads(Path(args.from_weights).with_suffix(".json").read_text())
        ship(model, args, record["training"])
        return 0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    start = time.time()
    depths = {int(d) for d in args.depths.split(",")}
    files = sorted(p for p in (Path(args.data) / "train").glob("*.ply")
                   if int(p.stem.rsplit("_d", 1)[1]) in depths)
    coarse = sorted({int(d) for d in args.coarse.split(",") if d})
    coarse_exclude = {m for m in args.coarse_exclude.split(",") if m}
    xs, ys, per_depth = [], [], {}
    for p in files:
        mesh, depth = p.stem.rsplit("_d", 1)[0], int(p.stem.rsplit("_d", 1)[1])
        voxels = octree.sort_voxels(read_ply(p))
        clouds = [(voxels, depth)]
        if depth == max(depths) and mesh not in coarse_exclude:
            clouds += coarse_clouds(voxels, depth, coarse)
        for cloud, d in clouds:
            keep = fine_keep(d, args.keep)
            for variant in [cloud] + (sparse_variants(cloud, rng) if args.sparse else []):
                x, y = cloud_samples(variant, d, keep if variant is cloud else
                                     keep * args.sparse, rng)
                xs.append(x)
                ys.append(y)
                per_depth[d] = per_depth.get(d, 0) + y.size
        print(f"{p.name}: {sum(y.size for y in ys)} samples so far ({time.time() - start:.0f} s)",
              flush=True)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys).astype(np.float32)
    del xs, ys
    n = y_all.size
    print(f"{n} samples, {y_all.mean():.3f} occupied, per depth {sorted(per_depth.items())}",
          flush=True)

    model = OccupancyMLP(tuple(int(h) for h in args.hidden.split(",")))
    if args.init:
        init, _, _ = load_weights(args.init)
        model.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_total = args.epochs * (n // args.batch)
    if args.steps:
        steps_total = min(steps_total, args.steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps_total)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    step, log_bits = 0, []
    for epoch in range(args.epochs):
        order = rng.permutation(n)
        for b in range(n // args.batch):
            idx = np.sort(order[b * args.batch:(b + 1) * args.batch])
            x = torch.from_numpy(np.unpackbits(x_all[idx], axis=1)[:, :N_FEATURES]).float()
            y = torch.from_numpy(y_all[idx])
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            log_bits.append(loss.item() / np.log(2))
            if step % 500 == 0:
                print(f"epoch {epoch} step {step}/{steps_total} bits/coded bit "
                      f"{np.mean(log_bits[-500:]):.4f} ({time.time() - start:.0f} s)", flush=True)
            if step >= steps_total or time.time() - start > args.max_seconds:
                break
        if step >= steps_total:
            break
        if time.time() - start > args.max_seconds:
            print("time budget reached", flush=True)
            break

    ship(model, args, {
            "data": "python -m reprocodec.train.pointcloud_data: CGAL libcgal-demo meshes (CC0) "
                    "sampled and voxelized (files below)" + (
                        f", the finest also re-voxelized at depths {args.coarse} (coordinates "
                        f">> shift, unique; not {args.coarse_exclude})" if coarse else "") + (
                        ", each also as sparse variants (1/4 and 1/16 random samplings, a "
                        "one-sided partial view)" if args.sparse else "") +
                    "; held out for testing: refined_elephant, fandisk_large, turbine (CGAL) "
                    "and the glmark2-data bunny",
            "files": [p.name for p in files],
            "samples": int(n),
            "samples_per_depth": {str(d): c for d, c in sorted(per_depth.items())},
            "keep": args.keep,
            "steps": step,
            "batch": args.batch,
            "lr": args.lr,
            "epochs": args.epochs,
            "seconds": round(time.time() - start, 1),
            "final_bits_per_coded_bit": float(np.mean(log_bits[-500:])),
            "hidden": list(model.hidden),
            "sparse": args.sparse,
            **({"coarse": coarse, "coarse_exclude": sorted(coarse_exclude)} if coarse else {}),
            **({"init": Path(args.init).name} if args.init else {}),
            "command": "python -m reprocodec.train.pointcloud_train " + " ".join(
                argv if argv is not None else sys.argv[1:]),
        })
    return 0


def ship(model: OccupancyMLP, args: argparse.Namespace, training: dict) -> None:
    """Write <out>/<name>.pt and .json (bounds empty: calibrate next)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pt = out / f"{args.name}.pt"
    extra = {}
    if args.first_layer == "gather":
        extra = {"first_layer": "gather", "first_layer_bits": gather_bits(model)}
    save_weights(str(pt), model, extra)
    sha = hashlib.sha256(pt.read_bytes()).hexdigest()
    meta = {
        "name": args.name,
        "architecture": "octree-context",
        "weights_sha256": sha,
        "hidden": list(model.hidden),
        "n_features": N_FEATURES,
        **extra,
        "training": training,
        "bounds": {},
    }
    (out / f"{args.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {pt} sha256 {sha[:12]}..", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
