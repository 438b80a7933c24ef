"""Entry-point flag checks that refuse to start a misconfigured server (no process started)."""

from __future__ import annotations

import logging
import queue
import threading

import pytest

from reprocodec.server.main import build_parser, serve


@pytest.mark.parametrize("argv", [
    ["--device", "cuda", "--profile", "cpu"],      # device and profile disagree
    ["--profile", "no-such-profile"],
    ["--tls-cert", "server.pem"],                  # a certificate without its key
    ["--tls-client-ca", "ca.pem"],                 # mutual TLS without TLS
    ["--max-concurrency", "0"],
    ["--max-message-mb", "0"],
    ["--bitstream-format", "9"],                   # a format this version does not write
])
def test_misconfiguration_exits_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        serve("decoder", argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_defaults_are_loopback_and_the_documented_ports():
    for service, port, metrics in (("encoder", 50051, 9101), ("decoder", 50052, 9102)):
        args = build_parser(service).parse_args([])
        assert (args.host, args.port, args.metrics_port) == ("127.0.0.1", port, metrics)
        assert args.tls_cert is None and args.auth_token_file is None


@pytest.mark.parametrize("service", ["encoder", "decoder"])
def test_help_prints_every_flag(service, capsys):
    """argparse formats help strings with %: a literal percent sign must be written %%."""
    with pytest.raises(SystemExit) as info:
        serve(service, ["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--bitstream-format" in out and "% of the container's memory limit" in out


def test_bitstream_format_defaults_to_the_newest():
    from reprocodec import container

    assert build_parser("encoder").parse_args([]).bitstream_format == container.FORMAT_VERSION
    assert build_parser("encoder").parse_args(["--bitstream-format", "2"]).bitstream_format == 2


def test_an_encoder_at_bitstream_format_2_writes_what_0_2_decoders_read():
    """The encoder service's --bitstream-format reaches its codecs: at 2 an integer voxel
    cloud's stream writes its placement out (format 2), and the service reports format 2."""
    from pathlib import Path

    from reprocodec import container
    from reprocodec.pointcloud.ply import read_ply
    from reprocodec.v1 import service_pb2
    from server.backend import Codecs, encode_point_cloud

    camel = read_ply(Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
                     / "camel_d6.ply")
    request = service_pb2.EncodePointCloudRequest(depth=6)
    streams = {fmt: encode_point_cloud(Codecs(None, bitstream_format=fmt), request, camel,
                                       "cpu").bitstream for fmt in (2, 3)}
    assert streams[2].format_version == 2 and len(streams[2].point_cloud.origin) == 3
    assert streams[3].format_version == 3 and not streams[3].point_cloud.origin
    assert container.placement(streams[2].point_cloud) == container.placement(
        streams[3].point_cloud)
    assert all(m.format_version == 2 for m in Codecs(None, bitstream_format=2).model_infos(set()))


def test_an_encoder_below_format_4_never_mixes_a_smallest_request():
    """A `smallest` request tries mixed probabilities (format 4) only on an encoder that may
    write format 4: at --bitstream-format 3 the same request gets a format-3 stream that
    0.3.0 decoders read, and both decode to the same cloud."""
    from pathlib import Path

    from reprocodec import container
    from reprocodec.pointcloud import PointCloudCodec
    from reprocodec.pointcloud.ply import read_ply
    from reprocodec.v1 import service_pb2
    from server.backend import Codecs, encode_point_cloud

    camel = read_ply(Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
                     / "camel_d6.ply")
    request = service_pb2.EncodePointCloudRequest(depth=6, smallest=True)
    streams = {fmt: encode_point_cloud(Codecs(None, bitstream_format=fmt), request, camel,
                                       "cpu").bitstream for fmt in (3, 4)}
    names = {fmt: [p.name for p in s.payloads] for fmt, s in streams.items()}
    assert streams[4].format_version == 4 and "occupancy_mixed" in names[4]
    assert streams[3].format_version == 3 and "occupancy_mixed" not in names[3]
    codec = PointCloudCodec.load(threads=1)
    decoded = [codec.decode(container.unpack(container.pack(streams[fmt]))).voxels
               for fmt in (3, 4)]
    assert (decoded[0] == decoded[1]).all() and len(decoded[0]) == camel.shape[0]


def test_a_request_lowers_the_format_and_an_unknown_one_is_refused():
    """EncodePointCloudRequest.max_format_version: 3 on a format-4 encoder gets no mixed
    payload; one older than every format the service writes is an InputError
    (INVALID_ARGUMENT); a newer one than it knows gets its newest."""
    from pathlib import Path

    import pytest

    from reprocodec.errors import InputError
    from reprocodec.pointcloud.ply import read_ply
    from reprocodec.v1 import service_pb2
    from server.backend import Codecs, encode_point_cloud

    camel = read_ply(Path(__file__).resolve().parent.parent / "reprocodec" / "samples"
                     / "camel_d6.ply")
    codecs = Codecs(None, bitstream_format=4)
    lowered = encode_point_cloud(codecs, service_pb2.EncodePointCloudRequest(
        depth=6, smallest=True, max_format_version=3), camel, "cpu").bitstream
    assert lowered.format_version == 3
    assert all(p.name != "occupancy_mixed" for p in lowered.payloads)
    with pytest.raises(InputError, match="max_format_version"):
        encode_point_cloud(codecs, service_pb2.EncodePointCloudRequest(
            depth=6, smallest=True, max_format_version=1), camel, "cpu")
    # a client of a later release asks for at most its newest: this service's newest it gets
    newer = encode_point_cloud(codecs, service_pb2.EncodePointCloudRequest(
        depth=6, smallest=True, max_format_version=99), camel, "cpu").bitstream
    assert newer.format_version == 4 and newer.payloads[0].name == "occupancy_mixed"


def test_the_exit_watchdog_leaves_and_logs_the_thread_that_held_the_exit(caplog):
    """A thread that never returns would hold the interpreter's exit (it joins non-daemon
    threads) forever; the watchdog armed at SIGTERM exits anyway and names it."""
    from reprocodec.server.main import _bound_exit

    release = threading.Event()
    holder = threading.Thread(target=release.wait, name="held-handler")
    holder.start()
    exits: queue.Queue[int] = queue.Queue()
    try:
        with caplog.at_level(logging.WARNING, logger="reprocodec.server"):
            watchdog = _bound_exit(0.1, exit_now=exits.put, last_resort=False)
            assert exits.get(timeout=30) == 0
            watchdog.join(30)
        assert watchdog.daemon  # a normal exit does not wait for it
        assert "did not finish within 0.1 s" in caplog.text
        assert "thread held-handler:" in caplog.text and "in wait" in caplog.text
    finally:
        release.set()
        holder.join(30)


_SIGNAL_ON_A_WORKER = """
import signal, threading, time
from reprocodec.server import main
stop = main._stop_on_signals()
started = time.monotonic()
def worker():
    time.sleep(0.2)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # lands on this thread
threading.Thread(target=worker, daemon=True).start()
main._wait_for_stop(stop)
print(round(time.monotonic() - started, 2))
"""


def test_a_sigterm_that_lands_on_a_worker_thread_stops_the_service():
    """The kernel may give a process's SIGTERM to any of its threads, and CPython runs the
    handler in the main thread only when that thread next runs: the service's main thread
    wakes every SIGNAL_POLL s to see it (it used to sleep an hour at a time)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SIGNAL_ON_A_WORKER], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 5, done.stdout


_HELD_WATCHDOG = """
import sys, threading, time
from reprocodec.server import main
main.LAST_RESORT_SLACK = 0.5
main._bound_exit(0.2, exit_now=lambda status: time.sleep(3600))  # a watchdog that is stuck
threading.Event().wait(60)
sys.exit(0)
"""


def test_the_last_resort_ends_a_process_whose_watchdog_is_stuck():
    """Where the watchdog cannot exit (a lock or the GIL held), faulthandler's C thread
    writes every thread's stack to stderr and ends the process (status 1) soon after."""
    import subprocess
    import sys
    import time

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _HELD_WATCHDOG], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and time.monotonic() - started < 50, done
    assert "Timeout" in done.stderr and "most recent call first" in done.stderr, done.stderr


def test_service_logs_keep_only_the_newest(tmp_path, monkeypatch):
    """Test and benchmark servers write their logs into one folder, which keeps the newest
    KEEP_LOGS (for a look after a failure) and drops older ones as new ones are made."""
    import os

    from reprocodec.server import testing

    monkeypatch.setattr(testing, "LOG_DIR", tmp_path / "logs")
    monkeypatch.setattr(testing, "KEEP_LOGS", 3)
    made = []
    for i in range(5):
        log = testing.new_log("encoder")
        os.utime(log, (1000 + i, 1000 + i))  # made in this order
        made.append(log)
    assert sorted((tmp_path / "logs").iterdir()) == sorted(made[2:])
    newest = testing.new_log("decoder")
    assert newest.name.startswith("decoder-") and newest.exists()
    assert sorted((tmp_path / "logs").iterdir()) == sorted(made[3:] + [newest])
