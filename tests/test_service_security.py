"""One real encoder with mutual TLS and a shared token: who gets in, and a graceful SIGTERM.

Certificates are made here with the `openssl` command line (a throwaway CA, a server
certificate for 127.0.0.1 and a client certificate).
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

import reprocodec
from reprocodec.client import EncoderClient, ServiceError
from reprocodec.server.testing import ServerProcess, wait_for

SAMPLE = Path(reprocodec.__file__).parent / "samples" / "coffee.png"
TOKEN = "s3cret-token-for-tests"

DRAIN_SECONDS = 3  # the server's --drain-seconds: the window to see NOT_SERVING in


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=reprocodec test CA", cwd=d)
    for name, san in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(san + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)
    (d / "token").write_text(TOKEN + "\n")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
    from reprocodec.image.testing import write_random_model

    weights = tmp_path_factory.mktemp("weights")
    write_random_model(weights, "bmshj2018-hyperprior", seed=0)
    proc = ServerProcess(
        "encoder", "--weights-dir", str(weights), "--drain-seconds", str(DRAIN_SECONDS),
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--tls-client-ca", str(pki / "ca.pem"), "--auth-token-file", str(pki / "token"),
    )
    try:
        yield proc.ready()
    finally:
        proc.stop()


def _client(server, pki, token=TOKEN, client_cert=True, **kwargs) -> EncoderClient:
    certs = {"client_cert": pki / "client.pem", "client_key": pki / "client.key"}
    return EncoderClient(server.target, tls=True, root_certificates=pki / "ca.pem",
                         token=token, retries=0, **(certs if client_cert else {}), **kwargs)


def test_tls_and_token_let_the_right_client_in(server, pki):
    with _client(server, pki) as client:
        assert client.encode_image(SAMPLE.read_bytes()).stats.payload_bytes > 0
        info = client.server_info()
        assert info.tls and info.auth


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_missing_or_wrong_token_is_unauthenticated(server, pki, token, monkeypatch):
    monkeypatch.delenv("REPROCODEC_AUTH_TOKEN", raising=False)
    before = server.metric("reprocodec_requests_total", method="EncodeImage",
                           code="UNAUTHENTICATED")
    with _client(server, pki, token=token or "") as client:
        with pytest.raises(ServiceError) as info:
            client.encode_image(SAMPLE.read_bytes())
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in info.value.details
        assert client.health() == "SERVING"  # health probes need no token
    assert server.metric("reprocodec_requests_total", method="EncodeImage",
                         code="UNAUTHENTICATED") == before + 1


def test_no_client_certificate_or_no_tls_cannot_connect(server, pki):
    with _client(server, pki, client_cert=False) as client:
        with pytest.raises(ServiceError) as info:
            client.health()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with EncoderClient(server.target, token=TOKEN, retries=0) as plaintext:
        with pytest.raises(ServiceError) as info:
            plaintext.health()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_sigterm_reports_not_serving_then_finishes_in_flight_work(server, pki):
    """Runs last in this module: it stops the server."""
    rng = np.random.default_rng(11)
    # Large enough that the encode outlasts the drain even on a fast machine.
    pixels = rng.integers(0, 256, size=(3000, 3000, 3), dtype=np.uint8)
    result: dict = {}

    def encode() -> None:
        with _client(server, pki, timeout=300) as client:
            try:
                result["response"] = client.encode_image(pixels)
            except ServiceError as exc:
                result["error"] = exc

    worker = threading.Thread(target=encode)
    worker.start()
    assert wait_for(lambda: server.metric("reprocodec_in_flight_requests") == 1, timeout=60)
    with _client(server, pki) as watcher:
        server.proc.send_signal(signal.SIGTERM)
        # NOT_SERVING comes first, inside the drain window: a health call must be answered
        # within it, which on a loaded 2-core CI (this encode on both cores) took over 2 s.
        assert wait_for(lambda: watcher.health() == "NOT_SERVING", timeout=DRAIN_SECONDS)
    # Past the drain the server refuses new calls but the encode is still running...
    assert wait_for(lambda: server.proc.poll() is None and _refuses_calls(server, pki), 10)
    assert server.metric("reprocodec_in_flight_requests") == 1
    worker.join(300)  # ...and completes
    assert "error" not in result, result.get("error")
    assert result["response"].bitstream.image.height == 3000
    assert server.proc.wait(60) == 0


def _refuses_calls(server, pki) -> bool:
    with _client(server, pki) as client:
        try:
            client.server_info(timeout=2)
        except ServiceError:
            return True
    return False
