"""Running real service processes from tests and benchmarks, and reading their metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

_READY = re.compile(r"READY service=(\w+) grpc=(\S+) metrics=(\S+)")
# The services' logs (stderr), in one folder: the newest KEEP_LOGS stay for a look after a
# failure (a hang at exit was placed from them), older ones go when a new one is made.
LOG_DIR = Path(tempfile.gettempdir()) / "reprocodec-server-logs"
KEEP_LOGS = 50


def new_log(service: str) -> Path:
    """A fresh log file in LOG_DIR, the oldest beyond the newest KEEP_LOGS removed first."""
    LOG_DIR.mkdir(exist_ok=True)
    logs = []
    for entry in os.scandir(LOG_DIR):
        try:
            logs.append((entry.stat().st_mtime, entry.path))
        except FileNotFoundError:  # removed by another process meanwhile
            pass
    for _, path in sorted(logs)[:max(len(logs) - KEEP_LOGS + 1, 0)]:
        Path(path).unlink(missing_ok=True)
    return Path(tempfile.mkstemp(prefix=f"{service}-", suffix=".log", dir=LOG_DIR)[1])


class ServerProcess:
    """`python -m reprocodec.server SERVICE --port 0 --metrics-port 0 FLAGS...` in a child.

    `ready()` waits for the READY line (start several, then wait: they load in parallel) and
    sets the bound addresses. stderr goes to a log file (new_log) whose tail is shown when
    start-up fails.
    """

    def __init__(self, service: str, *flags: str, env: dict[str, str] | None = None) -> None:
        self.service = service
        self.log = new_log(service)
        cmd = [sys.executable, "-m", "reprocodec.server", service,
               "--port", "0", "--metrics-port", "0", "--drain-seconds", "0", *flags]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env={**os.environ, **(env or {})})
        self.target = self.metrics_url = ""

    def ready(self, timeout: float = 180.0) -> ServerProcess:
        if not self.target:
            self.target, self.metrics_url = self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> tuple[str, str]:
        found: list[str] = []

        def read() -> None:  # a thread, so a silent child cannot block us past the timeout
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if _READY.search(line):
                    found.append(line)
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.service} did not start:\n{self.log_tail()}")
        m = _READY.search(found[0])
        assert m is not None
        return m.group(2), f"http://{m.group(3)}/metrics"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        """{(sample name, frozenset(labels.items())): value} of one scrape."""
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when the series does not exist yet)."""
        labels.setdefault("service", self.service)
        return self.scrape().get((name, frozenset(labels.items())), 0.0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.ready()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is None:  # kept (up to KEEP_LOGS) when the block failed
            self.log.unlink(missing_ok=True)


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


__all__ = ["ServerProcess", "wait_for"]
