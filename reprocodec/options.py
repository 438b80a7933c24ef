"""The safeguard options of a service request, name <-> protobuf enum, for the client and the
services alike (one table each). Unspecified means the default: syndrome, both levels."""

from __future__ import annotations

from .container import mode_from_proto, mode_to_proto
from .decision import LEVELS
from .errors import InputError
from .safeguard import Mode
from .v1 import bitstream_pb2, service_pb2

DEFAULT_MODE, DEFAULT_LEVEL = Mode.SYNDROME, "both"
_LEVEL_TO_PROTO = {
    "decoding": service_pb2.SAFEGUARD_LEVEL_DECODING,
    "reconstruction": service_pb2.SAFEGUARD_LEVEL_RECONSTRUCTION,
    "both": service_pb2.SAFEGUARD_LEVEL_BOTH,
}
assert set(_LEVEL_TO_PROTO) == set(LEVELS)
_LEVEL_FROM_PROTO = {v: k for k, v in _LEVEL_TO_PROTO.items()}


def parse_mode(mode: Mode | str) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise InputError(f"unknown safeguard mode {mode!r}; use one of "
                         f"{', '.join(m.value for m in Mode)}") from None


def parse_level(level: str) -> str:
    if level not in LEVELS:
        raise InputError(f"unknown safeguard level {level!r}; use one of {', '.join(LEVELS)}")
    return level


def mode_proto(mode: Mode | str) -> int:
    return mode_to_proto(parse_mode(mode))


def level_proto(level: str) -> int:
    return _LEVEL_TO_PROTO[parse_level(level)]


def mode_of(value: int) -> Mode:
    if value == bitstream_pb2.SAFEGUARD_MODE_UNSPECIFIED:
        return DEFAULT_MODE
    try:
        return mode_from_proto(value)
    except KeyError:
        raise InputError(f"unknown safeguard mode {value}; use one of "
                         f"{', '.join(m.value for m in Mode)}") from None


def level_of(value: int) -> str:
    if value == service_pb2.SAFEGUARD_LEVEL_UNSPECIFIED:
        return DEFAULT_LEVEL
    if value not in _LEVEL_FROM_PROTO:
        raise InputError(f"unknown safeguard level {value}; use one of {', '.join(LEVELS)}")
    return _LEVEL_FROM_PROTO[value]
