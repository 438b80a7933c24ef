"""The safeguard's two failures, which callers map to different gRPC statuses."""

from __future__ import annotations


class SafeguardError(ValueError):
    """Protection cannot be applied or resolved: bad parameters, or a decoder whose values do
    not reproduce the encoder's indices (outside the promised error bound; DATA_LOSS)."""


class MalformedSideInfo(SafeguardError):
    """Side information that no honest encoder writes, whatever the decoder's values: a bad
    mode tag or element count, a truncated or overlong field, trailing bytes, more blocks or
    rows than the caps allow (INVALID_ARGUMENT). Checked before any expensive work runs."""
