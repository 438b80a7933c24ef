"""One protected decision, end to end: the only place a codec turns floats into integers that
the other side must reproduce.

    encoder                                          decoder
    d.protect(values, mode) -> (indices, record)     d.resolve(record, values) -> indices
      safeguard protect, body, index checksum,         shape / level / bound checks (before
      the container record                             any work), test perturbation hook,
                                                       safeguard resolve_body, index checksum

Streams carry the safeguard's body only (`Protected.body`): the record's mode and shape are
its header. A point-cloud-style caller with several passes per record uses `protect_pass` /
`resolve_pass` for each pass and `record` / `check_record` once.

The decoder refuses a record whose error bound is looser than MAX_BOUND_FACTOR times the
model's calibrated bound before anything runs: a hostile bound would widen the risky zone
(and the syndrome elimination) to the whole tensor. Failures map to three statuses:
malformed records and side information -> ContainerError (INVALID_ARGUMENT, `malformed`); a
decoder whose values do not reproduce the encoder's -> VerificationError (DATA_LOSS); a
protect that fails on the encoder's own values (NaN from the networks) -> EncoderError
(INTERNAL, `encoder_numerics`), never blamed on a decoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import cancel, container, numerics
from .checksum import checksum
from .errors import ContainerError, EncoderError, VerificationError
from .safeguard import (
    DecisionQuantizer,
    ErrorBound,
    MalformedSideInfo,
    Mode,
    Protected,
    SafeguardError,
    SyndromeParts,
    protect,
    resolve_body,
    resolve_syndromes,
)
from .v1 import bitstream_pb2 as pb

# A stream may carry a bound up to this many times the model's calibrated one (an encoder may
# widen it deliberately, e.g. for a device it knows to be noisier); beyond, it is refused.
MAX_BOUND_FACTOR = 16.0

LEVELS = ("decoding", "reconstruction", "both")


@dataclass
class DecisionStats:
    """What one resolved record cost and whether it reproduced the encoder's indices."""

    name: str
    mode: str
    level: str
    risky_count: int
    candidate_count: int
    side_info_bytes: int
    matched: bool = True


@dataclass(frozen=True)
class ProtectedDecision:
    """A float tensor -> integer decision: its quantizer, calibrated bound and level."""

    name: str
    level: str  # "decoding" (entropy decoding depends on it) or "reconstruction" (output)
    quantizer: DecisionQuantizer
    bound: ErrorBound

    def __post_init__(self) -> None:
        self.quantizer.check_bound(self.bound)

    def mode_for(self, mode: Mode, level: str) -> Mode:
        """The mode this decision uses when the caller protects `level`."""
        return mode if level in (self.level, "both") else Mode.NONE

    # ----------------------------------------------------------------------------- encoder

    def protect_pass(self, values: np.ndarray, mode: Mode) -> Protected:
        """The encoder's indices and side information for one tensor (or one pass)."""
        cancel.check()  # between network stages: an abandoned request stops here
        if mode is Mode.NONE:  # the plain decision: no risk analysis
            return Protected(self._index(values), b"", Mode.NONE, 0, 0)
        try:
            return protect(values, self.quantizer, self.bound, mode)
        except SafeguardError as exc:
            raise EncoderError(f"encoder could not protect {self.name}: {exc}") from exc

    def record(self, indices: np.ndarray, body: bytes, mode: Mode, risky: int,
               candidates: int) -> pb.ProtectedTensor:
        """The container record: mode, bound, shape, body, checksum of the encoder's indices."""
        return container.make_protected(
            self.name, self.level, Protected(indices, body, mode, risky, candidates), self.bound)

    def protect(self, values: np.ndarray, mode: Mode) -> tuple[np.ndarray, pb.ProtectedTensor]:
        p = self.protect_pass(values, mode)
        return p.indices, self.record(p.indices, p.body, p.mode, p.risky_count,
                                      p.candidate_count)

    def _index(self, values: np.ndarray) -> np.ndarray:
        try:
            return self.quantizer.index(values, f"encoder's {self.name}")
        except SafeguardError as exc:
            raise EncoderError(f"encoder could not quantize {self.name}: {exc}") from exc

    # ----------------------------------------------------------------------------- decoder

    def check_record(self, t: pb.ProtectedTensor, shape: tuple[int, ...] | list[int]
                     ) -> tuple[Mode, ErrorBound]:
        """Everything about a record that can be checked before any work: name, level, shape,
        and a bound this model's thresholds allow and within MAX_BOUND_FACTOR of its own."""
        if t.name != self.name:
            raise ContainerError(f"expected protected tensor {self.name!r}, found {t.name!r}")
        if t.level != container.LEVELS[self.level]:
            raise ContainerError(f"protected tensor {self.name} must be at the {self.level} "
                                 "level")
        if list(t.shape) != list(shape):
            raise ContainerError(f"protected tensor {self.name} has shape {list(t.shape)}, the "
                                 f"model computes {list(shape)}")
        mode = container.mode_from_proto(t.mode)
        bound = container.bound_from_proto(t.bound)
        if bound.kind != self.bound.kind or bound.value > MAX_BOUND_FACTOR * self.bound.value:
            raise ContainerError(
                f"protected tensor {self.name}: stream's error bound {bound.kind} "
                f"{bound.value:g} is not within {MAX_BOUND_FACTOR:g}x of this model's calibrated "
                f"{self.bound.kind} {self.bound.value:g}; refused before decoding")
        try:
            self.quantizer.check_bound(bound)
        except SafeguardError as exc:
            raise ContainerError(f"protected tensor {self.name}: {exc}") from exc
        return mode, bound

    def resolve_pass(self, values: np.ndarray, body: bytes | SyndromeParts, mode: Mode,
                     bound: ErrorBound, verify: bool = True) -> np.ndarray:
        """The encoder's indices of one tensor (or pass) from this decoder's values; `body`:
        the pass's Protected.body, or its Protected.syndromes as its caller read them back.
        verify=False (benchmarks) falls back to the decoder's own indices on a failed solve."""
        cancel.check()  # between network stages: an abandoned request stops here
        values = numerics.perturb(self.name, values, bound)
        try:
            if mode is Mode.NONE:  # this decoder's own decision, as plain CompressAI
                if body:
                    raise MalformedSideInfo("mode 'none' carries no side information")
                return self.quantizer.index(values, f"decoder's {self.name}")
            if isinstance(body, SyndromeParts):  # a syndrome body its caller framed
                if mode is not Mode.SYNDROME:
                    raise MalformedSideInfo(f"syndrome fields for a {mode.value!r} record")
                return resolve_syndromes(values, self.quantizer, bound, body)
            return resolve_body(values, self.quantizer, bound, body, mode)
        except MalformedSideInfo as exc:
            raise ContainerError(f"malformed bitstream: side information of {self.name}: "
                                 f"{exc}") from exc
        except SafeguardError as exc:
            if verify:
                raise VerificationError(verification_message(self.name, str(exc))) from exc
            return self.quantizer.index(values)

    def resolve(self, t: pb.ProtectedTensor, values: np.ndarray, verify: bool = True,
                stats: list[DecisionStats] | None = None) -> np.ndarray:
        """check_record, resolve_pass, then the index checksum (VerificationError unless
        verify=False); appends this record's DecisionStats to `stats`."""
        mode, bound = self.check_record(t, np.shape(values))
        indices = self.resolve_pass(values, bytes(t.side_info), mode, bound, verify)
        return self.finish(t, indices, verify, stats)

    def finish(self, t: pb.ProtectedTensor, indices: np.ndarray, verify: bool,
               stats: list[DecisionStats] | None) -> np.ndarray:
        matched = checksum(indices) == t.indices_checksum
        if stats is not None:
            stats.append(DecisionStats(t.name, container.mode_from_proto(t.mode).value,
                                       self.level, t.risky_count, t.candidate_count,
                                       len(t.side_info), matched))
        if verify and not matched:
            raise VerificationError(verification_message(
                self.name, "its indices do not reproduce the encoder's checksum"))
        return indices


def verification_message(name: str, detail: str) -> str:
    return (
        f"decode failed verification on {name}: {detail}. This decoder's numerics differ from "
        "the encoder's by more than the stream's error bound; re-encode with a protected "
        "--safeguard mode or calibrated bounds, or decode on a platform matching the encoder"
    )


_warned: set[tuple[str, ...]] = set()


def coverage_note(bounds: dict[str, dict[str, Any]], encoder_profile: str,
                  decoder_profile: str) -> str:
    """Empty when both profiles are among those every calibrated bound covers (or no bound
    records its profiles); else a sentence naming the uncovered ones. The decoder decodes
    anyway (the checksums still refuse a wrong result) and logs this once per pair; a
    verification failure carries it, since it is the likely cause."""
    recorded = [set(b["profiles"]) for b in bounds.values() if b.get("profiles")]
    if not recorded:
        return ""
    covered = set.intersection(*recorded)
    outside = sorted({p for p in (encoder_profile, decoder_profile) if p and p not in covered})
    if not outside:
        return ""
    note = (f"numerics profile(s) {', '.join(outside)} are outside the set the model's bounds "
            f"were calibrated on ({', '.join(sorted(covered))}); run `reprocodec calibrate` "
            "with them")
    key = (encoder_profile, decoder_profile)
    if key not in _warned:
        _warned.add(key)
        logging.getLogger("reprocodec").warning(note)
    return note


def bound_from_info(bounds: dict[str, dict[str, Any]], name: str) -> ErrorBound:
    b = bounds[name]
    return ErrorBound(b["kind"], float(b["value"]))
