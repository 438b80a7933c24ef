"""Decision quantizers: float -> integer through sorted thresholds, k(v) = #{t : v > t}."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bounds import ErrorBound


class SafeguardError(ValueError):
    """Protection cannot be applied or resolved (bad parameters, malformed side information,
    or a decoder whose values lie outside the promised error bound)."""


@dataclass(frozen=True)
class Nearest:
    """For each element: the nearest threshold's number j, its value t, and |v - t|.

    Threshold number j separates index j (at or below t) from index j + 1 (above t).
    """

    j: np.ndarray
    t: np.ndarray
    distance: np.ndarray

    def take(self, positions: np.ndarray) -> Nearest:
        return Nearest(self.j[positions], self.t[positions], self.distance[positions])


class DecisionQuantizer:
    """Maps a float tensor to integers through sorted thresholds.

    Build with `uniform(step, offset)` (thresholds at offset + (j + 1/2) step for every
    integer j: rounding to a grid) or `from_thresholds(t)` (a finite sorted list, e.g.
    CompressAI's `scale_table[:-1]`; indices then run 0..len(t)).
    """

    def __init__(self, thresholds: np.ndarray | None, step: float = 0.0, offset: float = 0.0):
        self._thresholds = thresholds
        self.step = float(step)
        self.offset = float(offset)

    @classmethod
    def uniform(cls, step: float, offset: float = 0.0) -> DecisionQuantizer:
        if not (np.isfinite(step) and step > 0 and np.isfinite(offset)):
            raise SafeguardError(f"uniform quantizer needs a finite step > 0, got {step}")
        return cls(None, step=step, offset=offset)

    @classmethod
    def from_thresholds(cls, thresholds: np.ndarray | list[float]) -> DecisionQuantizer:
        t = np.asarray(thresholds, dtype=np.float64).ravel()
        if t.size == 0 or not np.all(np.isfinite(t)):
            raise SafeguardError("thresholds must be a non-empty list of finite numbers")
        if np.any(np.diff(t) <= 0):
            raise SafeguardError("thresholds must be strictly increasing")
        return cls(t)

    @property
    def thresholds(self) -> np.ndarray | None:
        return self._thresholds

    def index(self, v: np.ndarray) -> np.ndarray:
        """k(v) = #{t : v > t}, as int64, same shape as v."""
        v = np.asarray(v, dtype=np.float64)
        if self._thresholds is not None:
            return np.searchsorted(self._thresholds, v, side="left").astype(np.int64)
        return np.ceil((v - self.offset) / self.step - 0.5).astype(np.int64)

    def distance(self, v: np.ndarray) -> np.ndarray:
        """|v - t| for the nearest threshold t of each element (flat float64 input).

        On a uniform grid that is |frac(u) - 1/2| * step with u = (v - offset) / step: three
        passes over the tensor and no threshold numbers, which `nearest` computes only for the
        elements that turn out to be close.
        """
        if self._thresholds is not None:
            return self.nearest(v).distance
        u = (v - self.offset) / self.step if (self.offset, self.step) != (0.0, 1.0) else v
        d = u - np.floor(u)
        d -= 0.5
        np.abs(d, out=d)
        if self.step != 1.0:
            d *= self.step
        return d

    def nearest(self, v: np.ndarray) -> Nearest:
        """The threshold nearest to each element of v (flat float64 input)."""
        if self._thresholds is not None:
            t_all = self._thresholds
            pos = np.searchsorted(t_all, v, side="left")
            below = np.clip(pos - 1, 0, t_all.size - 1)
            above = np.clip(pos, 0, t_all.size - 1)
            d_below = np.abs(v - t_all[below])
            d_above = np.abs(v - t_all[above])
            j = np.where(d_below <= d_above, below, above)
            t = t_all[j]
            return Nearest(j=j.astype(np.int64, copy=False), t=t,
                           distance=np.minimum(d_below, d_above))
        else:
            j = np.floor((v - self.offset) / self.step).astype(np.int64)
            t = self.offset + (j + 0.5) * self.step
        return Nearest(j=j.astype(np.int64, copy=False), t=t, distance=np.abs(v - t))

    def check_bound(self, bound: ErrorBound) -> None:
        """Thresholds must be far enough apart that the encoder's 2e-zones never overlap
        (roughly 'more than 4e apart'): then every element is near at most one threshold."""
        if self._thresholds is None:
            if bound.kind != "absolute":
                raise SafeguardError("a uniform quantizer needs an absolute error bound")
            gap, need = self.step, 2 * float(bound.encoder_radius(np.zeros(1)))
        else:
            t = self._thresholds
            if t.size < 2:
                return
            gaps = np.diff(t)
            needs = np.broadcast_to(bound.encoder_radius(t[:-1]) + bound.encoder_radius(t[1:]),
                                    gaps.shape)
            worst = int(np.argmin(gaps - needs))
            gap, need = float(gaps[worst]), float(needs[worst])
        if not gap > need:
            raise SafeguardError(
                f"error bound {bound.kind} {bound.value:g} is too loose for these thresholds: "
                f"they are {gap:g} apart but must be more than {need:g} (about 4e); "
                "use a tighter bound or a coarser quantizer"
            )

    def describe(self) -> str:
        if self._thresholds is None:
            return f"uniform(step={self.step:g}, offset={self.offset:g})"
        return f"thresholds(n={self._thresholds.size})"
