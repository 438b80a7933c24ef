"""The `reprocodec` CLI: torch-free import, inspect, batches, one-line failures, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reprocodec import cli

SAMPLES = Path(__file__).resolve().parent.parent / "reprocodec" / "samples"


def run_cli(args: list[str], weights: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if weights is not None:
        env["REPROCODEC_WEIGHTS_DIR"] = str(weights)
    return subprocess.run([sys.executable, "-m", "reprocodec.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_imports_without_torch():
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys, reprocodec.cli as c; c.build_parser(); print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["encode", "x.png", "-o", "y.rpc"])  # neither --local nor --encoder
    assert exc.value.code == 2


def test_inspect_rejects_non_streams(tmp_path, capsys):
    bad = tmp_path / "bad.rpc"
    bad.write_bytes(b"\x00garbage")
    assert cli.main(["inspect", str(bad)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reprocodec: error:")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    pytest.importorskip("compressai")
    from reprocodec.image.io import write_png
    from reprocodec.image.testing import sample_crop, write_random_model

    root = tmp_path_factory.mktemp("cli")
    weights = root / "weights"
    name = write_random_model(weights, "bmshj2018-hyperprior", seed=0)
    good = [root / "a.png", root / "b.png"]
    write_png(good[0], sample_crop(height=40, width=70))
    write_png(good[1], sample_crop(height=64, width=64)[:, :, :1])
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = root / "rpc"
    done = run_cli(["encode", *map(str, good), str(broken), "-o", str(out), "--local",
                    "--model", name, "--safeguard", "flags"], weights)
    return root, weights, out, done


def test_batch_encode_reports_the_bad_file_and_continues(batch):
    _, _, out, done = batch
    assert done.returncode == cli.EXIT_FAILED
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("reprocodec: error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert sorted(p.name for p in out.glob("*.rpc")) == ["a.rpc", "b.rpc"]


def test_inspect_json_fields(batch):
    _, _, out, _ = batch
    done = run_cli(["inspect", str(out / "a.rpc"), "--json"])
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["codec"] == "CODEC_KIND_IMAGE"
    bpp = info["shape"].pop("bits_per_pixel")
    assert info["shape"] == {"height": 40, "width": 70, "channels": 3}
    assert bpp == pytest.approx(8 * info["total_bytes"] / (40 * 70))  # whole stream, as encode
    assert len(info["weights_sha256"]) == 64
    assert info["payload_bytes"] > 0
    assert info["overhead_ratio"] == pytest.approx(info["protection_bytes"] / info["payload_bytes"])
    names = {t["name"]: t for t in info["protected"]}
    assert set(names) == {"scale_index", "pixels"}
    assert names["scale_index"]["mode"] == "flags" and names["scale_index"]["level"] == "decoding"
    assert names["pixels"]["bound"]["kind"] == "absolute"
    assert all(t["risky_count"] <= t["candidate_count"] or t["mode"] != "syndrome"
               for t in info["protected"])


def test_batch_decode_to_directory(batch):
    root, weights, out, _ = batch
    dec = root / "png"
    done = run_cli(["decode", str(out / "a.rpc"), str(out / "b.rpc"), "-o", str(dec), "--local",
                    "--profile", "cpu-1thread"], weights)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    assert Image.open(dec / "a.png").size == (70, 40)
    assert Image.open(dec / "b.png").mode == "L"


def test_decode_with_other_weights_is_a_one_line_failure(batch, tmp_path):
    _, _, out, _ = batch
    from reprocodec.image.testing import write_random_model

    other = tmp_path / "weights"
    # same name, other weights: the stream's SHA-256 no longer matches
    write_random_model(other, "bmshj2018-hyperprior", seed=7,
                       name="bmshj2018-hyperprior-random0")
    done = run_cli(["decode", str(out / "a.rpc"), "-o", str(tmp_path / "a.png"), "--local"],
                   other)
    assert done.returncode == cli.EXIT_FAILED
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("reprocodec: error:")]
    assert len(errors) == 1 and "weights" in errors[0]


def test_version_and_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "reprocodec", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "bitstream formats 2-8" in done.stdout


def test_help_shows_defaults_and_an_example():
    done = run_cli(["encode", "--help"])
    assert done.returncode == 0
    assert "(default: syndrome)" in done.stdout and "example: reprocodec encode" in done.stdout


def test_light_install_gets_an_install_hint_not_a_traceback(tmp_path):
    # Simulate the light client: torch cannot be imported at all.
    code = ("import sys; sys.modules['torch'] = None; from reprocodec.cli import main; "
            f"sys.exit(main(['encode', {str(SAMPLES / 'coffee.png')!r}, '-o', "
            f"{str(tmp_path / 'x.rpc')!r}, '--local']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'reprocodec[server]'" in done.stderr


def test_trailing_slash_means_a_directory(tmp_path):
    out = tmp_path / "newdir"
    done = run_cli(["encode", str(SAMPLES / "coffee.png"), "-o", f"{out}/", "--local",
                    "--model", "bmshj2018-hyperprior-q1"])
    assert done.returncode == 0, done.stderr
    assert (out / "coffee.rpc").is_file()
    assert "encode: 1 of 1 input done" in done.stdout


def test_models_lists_the_shipped_models_with_their_calibration():
    done = run_cli(["models", "--json"])
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert {"bmshj2018-hyperprior-q2", "octree-ctx-v1"} <= rows.keys()
    assert "cpu" in rows["bmshj2018-hyperprior-q2"]["calibrated_profiles"]


def test_evaluate_writes_rate_quality_timing_and_protection(tmp_path):
    from reprocodec.image.io import read_image, write_png

    folder = tmp_path / "imgs"
    folder.mkdir()
    write_png(folder / "a.png", read_image(SAMPLES / "coffee.png")[:176, :200])
    out = tmp_path / "eval.json"
    done = run_cli(["evaluate", "--model", "bmshj2018-hyperprior-q1", "--images", str(folder),
                    "--json", str(out)])
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    row = result["per_image"][0]
    assert result["all_bit_exact"] and row["bit_exact"]
    assert row["bpp"] == pytest.approx(8 * row["bytes"] / (176 * 200))
    assert 15 < row["psnr"] < 60 and 0.5 < row["ms_ssim"] <= 1.0
    assert row["encode_s"] > 0 and row["decode_s"] > 0 and 0 <= row["overhead_ratio"] < 0.01


def test_local_encode_writes_the_requested_bitstream_format(tmp_path):
    """--bitstream-format 2 writes an integer voxel cloud as a 0.2.0 decoder reads it (the
    identity placement written out); without the flag (an auto encode: format 3) it is omitted.
    Both decode to the same cloud. With --smallest (the elephant sample) the default mixes with
    the mixer's version 2 (format 7), --bitstream-format 4 with version 1, and
    --bitstream-format 3 does not mix; all three decode to the same cloud."""
    from reprocodec import container

    camel = str(SAMPLES / "camel_d6.ply")
    sizes = {}
    for fmt in ("2", "3"):
        out = tmp_path / f"{fmt}.rpc"
        argv = ["encode", camel, "-o", str(out), "--local", "--depth", "6"]
        assert cli.main(argv + (["--bitstream-format", fmt] if fmt == "2" else [])) == 0
        msg = container.unpack(out.read_bytes())
        assert msg.format_version == int(fmt)
        sizes[fmt] = out.stat().st_size
        assert cli.main(["decode", str(out), "-o", str(tmp_path / f"{fmt}.ply"), "--local"]) == 0
    assert sizes["2"] - sizes["3"] == 35
    assert (tmp_path / "2.ply").read_bytes() == (tmp_path / "3.ply").read_bytes()
    # --smallest on the elephant sample at depth 7, where the mixer's version 2 wins
    elephant = str(SAMPLES / "elephant_d7.ply")
    mixed_payloads = {"7": "occupancy_mixed_v2", "4": "occupancy_mixed", "3": None}
    for fmt, mixed_payload in mixed_payloads.items():
        out = tmp_path / f"smallest{fmt}.rpc"
        argv = ["encode", elephant, "-o", str(out), "--local", "--depth", "7", "--smallest"]
        assert cli.main(argv + (["--bitstream-format", fmt] if fmt != "7" else [])) == 0
        msg = container.unpack(out.read_bytes())
        assert msg.format_version == int(fmt)
        assert {p.name for p in msg.payloads} & set(mixed_payloads.values()) == \
            ({mixed_payload} if mixed_payload else set())
        assert cli.main(["decode", str(out), "-o", str(tmp_path / f"s{fmt}.ply"), "--local"]) == 0
    assert (tmp_path / "s7.ply").read_bytes() == (tmp_path / "s3.ply").read_bytes() == \
        (tmp_path / "s4.ply").read_bytes()
