"""Safeguard side-information cost and speed per mode.

    python bench/safeguard.py [--n 300000] [--repeat 5] [--json]

For each risky fraction, encoder values are smooth (normal, sigma 8 grid steps) on a unit grid
and the absolute bound e is set so that a fraction f of elements is within e of a threshold
(f = 2e). The decoder's values differ by uniform noise within the bound. Times are medians
of --repeat runs of protect and of resolve, single-threaded numpy. "work" is the syndrome
decoder's work bound (syndrome.decoder_work) per tensor element; a decoder refuses streams over
WORK_PER_ELEMENT per element (+ a floor).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from reprocodec.safeguard import DecisionQuantizer, ErrorBound, Mode, protect, resolve  # noqa: E402
from reprocodec.safeguard import syndrome as gf2  # noqa: E402
from reprocodec.safeguard.bitio import BitReader, decode_varint  # noqa: E402

FRACTIONS = (1e-4, 1e-3, 1e-2)


def work_per_element(protected, n: int) -> float:
    """The decoder's work bound for a syndrome stream, per element (0 for the other modes)."""
    if protected.mode is not Mode.SYNDROME or not protected.body:
        return 0.0
    n_blocks, pos = decode_varint(protected.body, 0)
    rows = BitReader(protected.body[pos:]).read_rice(n_blocks)
    return gf2.decoder_work(n, n_blocks, rows) / n


def measure(n: int, fraction: float, mode: Mode, repeat: int) -> dict:
    rng = np.random.default_rng(12345)
    quantizer = DecisionQuantizer.uniform(1.0)
    bound = ErrorBound.absolute(fraction / 2)
    v_enc = rng.normal(0, 8, n)
    v_dec = v_enc + rng.uniform(-1, 1, n) * bound.value * 0.999
    t_protect, t_resolve = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        protected = protect(v_enc, quantizer, bound, mode)
        t1 = time.perf_counter()
        indices = resolve(v_dec, quantizer, bound, protected.stream, mode)
        t2 = time.perf_counter()
        t_protect.append(t1 - t0)
        t_resolve.append(t2 - t1)
    exact = bool(np.array_equal(indices, protected.indices))
    risky = max(protected.risky_count, 1)
    return {
        "n": n,
        "risky_fraction": fraction,
        "mode": mode.value,
        "risky": protected.risky_count,
        "candidates": protected.candidate_count,
        "bytes": len(protected.stream),
        "bits_per_risky": 8 * len(protected.stream) / risky,
        "protect_ms": 1e3 * statistics.median(t_protect),
        "resolve_ms": 1e3 * statistics.median(t_resolve),
        "work_per_element": work_per_element(protected, n),
        "exact": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = [measure(args.n, f, m, args.repeat) for f in FRACTIONS
            for m in (Mode.FLAGS, Mode.SIMPLIFIED, Mode.SYNDROME)]
    checks = []
    for f in FRACTIONS:
        by_mode = {r["mode"]: r for r in rows if r["risky_fraction"] == f}
        ratio = by_mode["syndrome"]["bytes"] / max(by_mode["flags"]["bytes"], 1)
        total_ms = by_mode["syndrome"]["protect_ms"] + by_mode["syndrome"]["resolve_ms"]
        limit_ms = 50 if f <= 1e-3 else 1000
        checks.append({"risky_fraction": f, "syndrome_over_flags": ratio,
                       "syndrome_ratio_ok": ratio <= 1 / 3,
                       "syndrome_total_ms": total_ms, "limit_ms": limit_ms,
                       "time_ok": total_ms < limit_ms})
    if args.json:
        print(json.dumps({"rows": rows, "floors": checks}, indent=2))
        return
    print(f"N = {args.n}, median of {args.repeat} runs, single thread")
    print(f"{'fraction':>8} {'mode':>10} {'risky':>6} {'cand':>6} {'bytes':>7} "
          f"{'bits/risky':>10} {'protect ms':>10} {'resolve ms':>10} {'work/n':>6} exact")
    for r in rows:
        print(f"{r['risky_fraction']:>8g} {r['mode']:>10} {r['risky']:>6} {r['candidates']:>6} "
              f"{r['bytes']:>7} {r['bits_per_risky']:>10.2f} {r['protect_ms']:>10.1f} "
              f"{r['resolve_ms']:>10.1f} {r['work_per_element']:>6.2f} {r['exact']}")
    print()
    for c in checks:
        ratio_ok = "ok" if c["syndrome_ratio_ok"] else "FAIL"
        time_ok = "ok" if c["time_ok"] else "FAIL"
        print(f"fraction {c['risky_fraction']:g}: syndrome/flags bytes = "
              f"{c['syndrome_over_flags']:.3f} (floor <= 0.333: {ratio_ok}), "
              f"syndrome protect+resolve = {c['syndrome_total_ms']:.1f} ms "
              f"(floor < {c['limit_ms']} ms: {time_ok})")


if __name__ == "__main__":
    main()
