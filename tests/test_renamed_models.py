"""A stream pins its model's weights by SHA-256; when a new rate point renames shipped models
(names rank by rate), the renamed weights still decode every stream written with them
(registry.model_of_stream), locally and through the decoder service."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

pytest.importorskip("compressai")

from reprocodec import container, registry  # noqa: E402
from reprocodec.errors import ModelMismatchError  # noqa: E402
from reprocodec.image import ImageCodec  # noqa: E402
from reprocodec.image.testing import run_cli, sample_crop, write_random_model  # noqa: E402
from reprocodec.server import backend  # noqa: E402
from reprocodec.v1 import bitstream_pb2 as pb  # noqa: E402


def _stream(model: str, digest: bytes) -> pb.Bitstream:
    return pb.Bitstream(model=model, weights_sha256=digest)


def _info(name: str, digest: bytes) -> SimpleNamespace:
    return SimpleNamespace(name=name, weights_sha256=digest.hex())


def test_the_named_model_first_then_the_one_holding_the_weights():
    a, b, c = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    models = [_info("m-q1", b), _info("m-q2", a), _info("m-q3", c)]
    assert registry.model_of_stream(_stream("m-q2", a), models) == "m-q2"
    # "m-q1" was renamed "m-q2" and a new m-q1 took its name: the weights decide.
    assert registry.model_of_stream(_stream("m-q1", a), models) == "m-q2"
    # Nobody has the weights: the stream's own name, for the codec's own refusal.
    assert registry.model_of_stream(_stream("m-q1", b"\x09" * 32), models) == "m-q1"
    assert registry.model_of_stream(_stream("gone", b"\x09" * 32), models) == "gone"


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    """Weights written as old-q1, a stream encoded with them, then the folder as a newer
    release ships it: those weights renamed new-q2, and different weights named old-q1."""
    root = tmp_path_factory.mktemp("renamed")
    before, after = root / "before", root / "after"
    write_random_model(before, name="old-q1", seed=0)
    msg = ImageCodec.load("old-q1", str(before)).encode(sample_crop(height=40, width=56))
    (root / "s.rpc").write_bytes(container.pack(msg))
    after.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(before / f"old-q1{suffix}", after / f"new-q2{suffix}")
    meta = json.loads((after / "new-q2.json").read_text())
    meta.update(name="new-q2", quality=2)
    (after / "new-q2.json").write_text(json.dumps(meta))
    write_random_model(after, name="old-q1", seed=1)
    write_random_model(root / "gone", name="old-q1", seed=1)  # the stream's weights nowhere
    return root, msg


def test_the_cli_decodes_a_stream_of_renamed_weights_bit_exactly(renamed):
    root, _ = renamed
    done = run_cli(["decode", str(root / "s.rpc"), "-o", str(root / "out.png"), "--local"],
                   root / "after")
    assert done.returncode == 0, done.stderr
    assert (root / "out.png").exists()
    # With the stream's weights gone, the refusal is the usual one, naming the weights.
    done = run_cli(["decode", str(root / "s.rpc"), "-o", str(root / "no.png"), "--local"],
                   root / "gone")
    assert done.returncode != 0 and "weights" in done.stderr
    assert not (root / "no.png").exists()


def test_the_decoder_service_finds_renamed_weights_by_their_hash(renamed):
    root, msg = renamed
    codecs = backend.Codecs(root / "after")
    entry = codecs.check_stream(msg, pb.CODEC_KIND_IMAGE)
    assert entry.name == "new-q2" and entry.weights_sha256 == bytes(msg.weights_sha256)
    decoded = codecs.codec(entry).decode(msg)
    assert decoded.bit_exact
    with pytest.raises(ModelMismatchError):
        backend.Codecs(root / "gone").check_stream(msg, pb.CODEC_KIND_IMAGE)
