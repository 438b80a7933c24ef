"""The exceptions reprocodec raises, each tied to the gRPC status the services answer with.

Every message should tell the user what to do next, not only what went wrong.
"""

from __future__ import annotations


class ReprocodecError(Exception):
    """Base class. `grpc_status` names a `grpc.StatusCode` member (kept as a string so this
    module imports without grpc); `reason` is the label used in failure metrics."""

    grpc_status = "INTERNAL"
    reason = "internal"


class InputError(ReprocodecError, ValueError):
    """Unreadable, empty or invalid user input (image, point cloud, parameter)."""

    grpc_status = "INVALID_ARGUMENT"
    reason = "malformed"


class ContainerError(InputError):
    """A bitstream that is not a well-formed reprocodec container (framing, version, crc)."""


class UnknownModelError(ReprocodecError, LookupError):
    grpc_status = "FAILED_PRECONDITION"
    reason = "unknown_model"


class ModelMismatchError(ReprocodecError):
    """The stream was encoded with other weights than this decoder has."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "model_mismatch"


class VerificationError(ReprocodecError):
    """The decoder could not reproduce the encoder's protected indices or output checksum:
    its numerics differ from the encoder's by more than the stream's error bound."""

    grpc_status = "DATA_LOSS"
    reason = "verification"


class EncoderError(ReprocodecError):
    """The encoder could not protect its own values (NaN or infinity out of its networks, a
    syndrome that cannot reach full rank): a fault of this encoder, never of a decoder."""

    grpc_status = "INTERNAL"
    reason = "encoder_numerics"


class TooLargeError(ReprocodecError):
    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "too_large"
