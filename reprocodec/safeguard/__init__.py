"""Error-bounded protection of the float decisions a codec's decoder must reproduce.

A network computes a float tensor v on both sides (say CompressAI's sigma); a
DecisionQuantizer turns it into integers (the CDF index). Encoder and decoder run on
different hardware, so v_dec differs from v_enc by up to an ErrorBound, and an element near a
threshold can land in a different bin. `protect` gives the encoder the indices to code with
plus side information; `resolve` gives any decoder within the bound exactly those indices.

    >>> q = DecisionQuantizer.uniform(1.0)
    >>> bound = ErrorBound.absolute(1e-3)
    >>> p = protect(v_enc, q, bound, Mode.SYNDROME)
    >>> assert (resolve(v_dec, q, bound, p.stream, Mode.SYNDROME) == p.indices).all()

Modes: `none`, `flags` (risky map + direction flags, Pang et al.), `simplified` (risky map,
canonical index), `syndrome` (GF(2) syndrome of index parities; no map; guaranteed decodable).

`Protected.body` and `resolve_body` are the same without the stream's (mode tag, element count)
header, for callers that record both themselves. resolve raises MalformedSideInfo (a
SafeguardError) for side information no encoder writes (INVALID_ARGUMENT) and SafeguardError
when the decoder's values do not reproduce the encoder's indices (DATA_LOSS).
"""

from .bounds import ErrorBound
from .errors import MalformedSideInfo, SafeguardError
from .modes import (
    Mode,
    Protected,
    SyndromeParts,
    protect,
    resolve,
    resolve_body,
    resolve_syndromes,
    warm_up,
)
from .quantizer import DecisionQuantizer

__all__ = [
    "DecisionQuantizer",
    "ErrorBound",
    "MalformedSideInfo",
    "Mode",
    "Protected",
    "SafeguardError",
    "SyndromeParts",
    "protect",
    "resolve",
    "resolve_body",
    "resolve_syndromes",
    "warm_up",
]
