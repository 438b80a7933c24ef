"""Error bounds: how far a protected variable may differ between encoder and decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# Relative slack added to every radius: covers the float64 rounding in computing distances
# to thresholds (|v - t| is exact to ~1e-16 relative), with a wide margin.
RADIUS_SLACK = 1e-3


@dataclass(frozen=True)
class ErrorBound:
    """Promise that |v_enc - v_dec| <= value (absolute) or <= value * |v_enc| (relative).

    The relative form suits CompressAI's log-spaced scale table, whose thresholds are
    relatively equidistant. From the promise we derive, per threshold t:

    * `risky_radius(t)`: if a threshold t lies between v_enc and v_dec, both are within this
      distance of t. Absolute: e. Relative: e|t| / (1 - e).
    * `encoder_radius(t)`: for any element the decoder sees within risky_radius of t, the
      encoder's value is within this distance of t (triangle inequality): about 2e.
    """

    kind: Literal["absolute", "relative"]
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("absolute", "relative"):
            raise ValueError(f"ErrorBound kind must be 'absolute' or 'relative', not {self.kind!r}")
        if not np.isfinite(self.value) or self.value < 0:
            raise ValueError(f"error bound must be a finite non-negative number, got {self.value}")
        if self.kind == "relative" and self.value >= 0.25:
            raise ValueError(f"relative error bound must be below 0.25, got {self.value}")

    @classmethod
    def absolute(cls, e: float) -> ErrorBound:
        return cls("absolute", float(e))

    @classmethod
    def relative(cls, e: float) -> ErrorBound:
        return cls("relative", float(e))

    def risky_radius(self, t: np.ndarray) -> np.ndarray | float:
        """Distance to threshold t within which an element is risky (slack included).
        A scalar for absolute bounds (broadcasts; saves an array the size of the tensor)."""
        if self.kind == "absolute":
            return self.value * (1.0 + RADIUS_SLACK)
        return self.value * np.abs(t) / (1.0 - self.value) * (1.0 + RADIUS_SLACK)

    def encoder_radius(self, t: np.ndarray) -> np.ndarray | float:
        """Radius around t that contains v_enc whenever v_dec is within risky_radius(t).

        |v_enc - t| <= |v_enc - v_dec| + |v_dec - t|. Absolute: e + r. Relative:
        d <= e(|t| + d) + r  =>  d <= (e|t| + r) / (1 - e).
        """
        r = self.risky_radius(t)
        if self.kind == "absolute":
            out = self.value + r
        else:
            out = (self.value * np.abs(t) + r) / (1.0 - self.value)
        return out * (1.0 + RADIUS_SLACK)
