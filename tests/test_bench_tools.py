"""CI-sized runs of bench tools that have no other test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from reprocodec.pointcloud.ply import write_ply

ROOT = Path(__file__).resolve().parent.parent


def _paired_line(name: str, *args: str) -> str:
    """paired_trees.py's line for `name`: this checkout against itself, one pair, one run."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paired_trees.py"), "--other", str(ROOT),
         "--pairs", "1", "--reps", "1", "--threads", "1", *args],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300).stdout
    line = next(x for x in out.splitlines() if x.startswith(name))
    bits = re.search(r"\| bits (\d+\.\d{4}) -> (\d+\.\d{4}) \|", line)
    assert bits and bits[1] == bits[2] and float(bits[1]) > 0, line  # the same stream
    number = r"\d+\.\d\d"
    assert re.fullmatch(rf"{re.escape(name)}\s+\| bits \S+ -> \S+ \| encode {number} -> "
                        rf"{number} \({number}\) \| decode {number} -> {number} \({number}\)",
                        line), line
    return line


def test_paired_trees_compares_a_checkout_with_itself():
    """One pair, one run, the smallest sample: a line per cloud with both streams' bits a
    point, both medians and the pair's ratio for encode and decode."""
    _paired_line("camel (sample)", "camel (sample)")


def test_paired_trees_times_the_clouds_of_a_folder(tmp_path):
    """--real: the .ply files of a folder at each of --real-depths, named as
    bench/pointcloud.py names them."""
    rng = np.random.default_rng(3)
    write_ply(tmp_path / "blob.ply", rng.integers(0, 200, (3000, 3)).astype(np.float64))
    _paired_line("blob d7", "--real", str(tmp_path), "--real-depths", "6,7")


def test_paired_trees_in_process_compares_a_checkout_with_itself():
    """--in-process: one line per cloud with whether both wrote the same bytes and the
    minima old -> new with their ratio (this checkout against itself: its own package)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paired_trees.py"), "--other", str(ROOT),
         "--in-process", "--reps", "1", "camel (sample)"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300).stdout
    line = next(x for x in out.splitlines() if x.startswith("camel (sample)"))
    number = r"\d+\.\d\d"
    assert re.fullmatch(rf"camel \(sample\)\s+\| same bytes \| encode {number} -> {number} "
                        rf"\({number}\) \| decode {number} -> {number} \({number}\)", line), line


def test_paired_trees_copies_a_checkout_under_another_name(tmp_path):
    """The other checkout's package is copied with its absolute imports renamed, so both
    import side by side (nothing is compiled until called)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import paired_trees

        paired_trees._package_copy(ROOT, "reprocodec_copy", tmp_path)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    copied = list((tmp_path / "reprocodec_copy").rglob("*.py"))
    assert copied and not (tmp_path / "reprocodec_copy" / "weights").exists()
    assert not any(re.search(r"\b(from|import) reprocodec\b", p.read_text()) for p in copied)
    check = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "import reprocodec_copy.pointcloud.codec as c, reprocodec_copy.container; "
             "assert c.__file__.startswith(sys.argv[1]); print('ok')")
    out = subprocess.run([sys.executable, "-c", check, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "ok"


def test_first_request_times_fresh_services():
    """bench/first_request.py, one run: the time to READY, each service's RSS there, and the
    first and second request of each kind, every one a number (the requests went through)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "first_request.py"), "--runs", "1"],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=600).stdout
    keys = ["READY", "encoder MB at READY", "decoder MB at READY"] + [
        f"{n} {call}" for n in ("first", "second")
        for call in ("EncodePointCloud", "DecodePointCloud", "EncodeImage", "DecodeImage")]
    found = {}
    for line in out.splitlines()[1:]:
        match = re.fullmatch(r"  (.+?)\s+(\d+)   \((\d+)\)", line)
        assert match, line
        found[match[1]] = int(match[2])
    assert list(found) == keys and all(v > 0 for v in found.values()), out


def test_the_cloud_table_worker_warms_up_and_times_a_cloud(tmp_path):
    """bench/pointcloud.py's worker for one cloud (what --clouds runs in a fresh process per
    cloud): lossless, the first run timed apart from the median, the peak RSS counted from
    the warmed-up codec on."""
    import json

    from reprocodec.pointcloud import octree
    from reprocodec.pointcloud.ply import read_ply

    voxels = octree.voxelize(read_ply(ROOT / "reprocodec" / "samples" / "camel_d6.ply"), 6).voxels
    np.save(tmp_path / "cloud.npy", voxels)
    def worker(*flags: str) -> dict:
        subprocess.run([sys.executable, str(ROOT / "bench" / "pointcloud.py"),
                        "--measure-worker", "--cloud", str(tmp_path / "cloud.npy"), "--depth",
                        "6", "--threads", "1", "--result", str(tmp_path / "row.json"), *flags],
                       cwd=ROOT, check=True, timeout=600)
        return json.loads((tmp_path / "row.json").read_text())

    row = worker("--runs", "2", "--min-seconds", "0")
    assert row["ours_lossless"] and row["points"] == len(voxels) and row["runs"] == 2
    for key in ("first_encode_s", "first_decode_s", "encode_s", "decode_s"):
        assert 0 < row[key] < 60, key
    assert 0 < row["loaded_rss_mb"] <= row["peak_rss_mb"]
    # the encodes' and the decodes' peaks apart (two services), the larger one the peak
    assert row["peak_rss_mb"] == max(row["encode_peak_rss_mb"], row["decode_peak_rss_mb"])
    assert 0 < row["decode_loaded_rss_mb"] <= row["decode_peak_rss_mb"]
    # more runs while they took under --min-seconds together (the camel: ~20 ms a run)
    row = worker("--runs", "2", "--min-seconds", "0.2")
    assert row["runs"] > 2 and row["runs"] * (row["encode_s"] + row["decode_s"]) > 0.1
