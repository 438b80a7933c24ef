"""Decision quantizers: float -> integer through sorted thresholds, k(v) = #{t : v > t}."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import native
from .bounds import ErrorBound
from .errors import SafeguardError

__all__ = ["DecisionQuantizer", "Nearest", "SafeguardError"]

# Beyond 2**52 grid steps floor() and the fractional part stop being exact.
_UNIFORM_LIMIT = 2.0**52


@dataclass(frozen=True)
class Nearest:
    """For each element: the nearest threshold's number j, its value t, and |v - t|.

    Threshold number j separates index j (at or below t) from index j + 1 (above t).
    """

    j: np.ndarray
    t: np.ndarray
    distance: np.ndarray

    @classmethod
    def empty(cls) -> Nearest:
        """No element's: what nearest() gives for none, without its arithmetic (a pass of an
        encode has no element near a threshold most of the time: 4.5 us of its ~15)."""
        return cls(j=np.empty(0, np.int64), t=np.empty(0), distance=np.empty(0))

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

    def index(self, v: np.ndarray, what: str = "tensor") -> np.ndarray:
        """k(v) = #{t : v > t}, as int64, same shape as v."""
        k, _, _ = self.index_and_near(v, None, what)
        return k.reshape(np.shape(v))

    def index_and_near(self, v: np.ndarray, radius, what: str = "tensor"
                       ) -> tuple[np.ndarray, np.ndarray, Nearest]:
        """(k, positions, near): k(v) for every element (flat int64), the positions (ascending)
        of the elements within radius(t) of a threshold t, and for just those elements that
        threshold (`near.j`: the one the element is risky for, see `_bracket`). radius None:
        no positions.

        A uniform grid takes a scalar radius (absolute bounds) and one fused pass (numba) or
        its numpy reference: threshold numbers are computed only for the elements that are
        close, which is most of the time saved on a million-pixel tensor. With a constant
        radius below half the step only the nearest threshold can be within it.
        """
        flat = np.ascontiguousarray(v).ravel()
        if flat.dtype not in (np.float32, np.float64):  # the kernels read float32 or float64
            flat = flat.astype(np.float64)
        if self._thresholds is None:
            r = -1.0 if radius is None else float(radius(0.0))
            if native.AVAILABLE:
                k = np.empty(flat.size, dtype=np.int64)
                near_pos = np.empty(flat.size if radius is not None else 0, dtype=np.int64)
                count = native.uniform_kernel(flat, self.offset, self.step, r, k, near_pos)
                positions = near_pos[:max(count, 0)].copy()
            else:
                count, k, positions = self._uniform_reference(flat, r)
            if count < 0:
                raise SafeguardError(f"{what} contains NaN or infinity, or values beyond 2**52 "
                                     "grid steps; it cannot be protected")
            return k, positions, (self.nearest(flat[positions].astype(np.float64))
                                  if positions.size else Nearest.empty())
        t_all = self._thresholds
        # Per-threshold radii, computed once: both implementations compare against these.
        r_all = np.ascontiguousarray(
            np.broadcast_to(-1.0 if radius is None else radius(t_all), t_all.shape), np.float64)
        if native.AVAILABLE:
            k = np.empty(flat.size, dtype=np.int64)
            size = flat.size if radius is not None else 0
            near_pos = np.empty(size, dtype=np.int64)
            near_j = np.empty(size, dtype=np.int64)
            count = native.thresholds_kernel(flat, t_all, r_all, k, near_pos, near_j)
            if count < 0:
                raise SafeguardError(f"{what} contains NaN or infinity; it cannot be protected")
            positions = near_pos[:count].copy()
            j = near_j[:count].copy()
            t = t_all[j]
            return k, positions, Nearest(j, t, np.abs(flat[positions].astype(np.float64) - t))
        flat = flat.astype(np.float64, copy=False)
        if not np.all(np.isfinite(flat)):
            raise SafeguardError(f"{what} contains NaN or infinity; it cannot be protected")
        k = np.searchsorted(t_all, flat, side="left").astype(np.int64)
        if radius is None:
            return k, np.zeros(0, dtype=np.int64), self.nearest(flat[:0])
        near, within = self._bracket(flat, r_all)
        positions = np.flatnonzero(within)
        return k, positions, near.take(positions)

    def near_within(self, v: np.ndarray, radius) -> tuple[Nearest, np.ndarray]:
        """For each element of v (flat float64): the threshold it is within radius(t) of, by
        the same rule as index_and_near, and whether there is one (else `near` holds the
        nearest threshold). The decoder's pick of the threshold a named element is risky for.
        """
        if self._thresholds is None:
            near = self.nearest(v)
            return near, near.distance <= radius(near.t)
        t_all = self._thresholds
        r_all = np.broadcast_to(radius(t_all), t_all.shape).astype(np.float64)
        return self._bracket(v, r_all)

    def _bracket(self, v: np.ndarray, r_all: np.ndarray) -> tuple[Nearest, np.ndarray]:
        """numpy twin of native.thresholds_kernel's threshold pick. For each element, of its
        two bracketing thresholds (the largest below it and the smallest at or above it),
        the one it is within r_all[j] of; if both are, the nearer (ties: the one below); if
        neither, the nearer. Returns (Nearest, within).

        Why the two bracketing thresholds suffice. The radii r(t) are Lipschitz in t with a
        constant L < 1: constant for absolute bounds (L = 0); c|t| for relative ones, with
        c < 0.78 for the encoder radius and < 0.34 for the risky radius because e < 0.25
        (ErrorBound refuses more). Say v is within r(t_i) of a threshold t_i below it that
        is not the bracketing threshold t_b, so t_i < t_b < v. Then
            v - t_b = (v - t_i) - (t_b - t_i) <= r(t_i) - (t_b - t_i)
                    <= r(t_b) + L (t_b - t_i) - (t_b - t_i) < r(t_b),
        so v is within the radius of t_b too (the same argument mirrors above v). Looking at
        the nearest threshold only is not enough: with a relative bound the zone of the
        larger neighbour can reach past the midpoint between two thresholds.

        Which one: check_bound keeps consecutive thresholds more than E(t_i) + E(t_i+1)
        apart, so the encoder-radius zones (which contain the risky-radius zones) are
        disjoint intervals and an element is within the radius of at most one threshold:
        the tie rules above only matter for bounds check_bound refuses, and keep both
        implementations deterministic and identical.
        """
        t_all = self._thresholds
        assert t_all is not None
        last = t_all.size - 1
        pos = np.searchsorted(t_all, v, side="left")
        below = np.clip(pos - 1, 0, last)
        above = np.clip(pos, 0, last)
        d_below = np.abs(v - t_all[below])
        d_above = np.abs(v - t_all[above])
        in_below = d_below <= r_all[below]
        in_above = d_above <= r_all[above]
        pick_below = (in_below & ~in_above) | ((in_below == in_above) & (d_below <= d_above))
        j = np.where(pick_below, below, above).astype(np.int64, copy=False)
        return (Nearest(j=j, t=t_all[j], distance=np.where(pick_below, d_below, d_above)),
                in_below | in_above)

    def _uniform_reference(self, flat: np.ndarray, radius: float
                           ) -> tuple[int, np.ndarray, np.ndarray]:
        """numpy twin of native.uniform_kernel (the same float64 operations, so the same
        results): u = (v - offset) / step, j = floor(u), f = u - j, k = j + (f > 1/2),
        distance |f - 1/2| * step."""
        scaled = (self.offset, self.step) != (0.0, 1.0)
        u = flat.astype(np.float64)
        if scaled:
            u = (u - self.offset) / self.step
        if u.size and not np.max(np.abs(u)) < _UNIFORM_LIMIT:  # false for NaN too
            return -1, np.zeros(0, np.int64), np.zeros(0, np.int64)
        j = np.floor(u)
        f = u - j
        k = j.astype(np.int64)
        k += f > 0.5
        f -= 0.5
        np.abs(f, out=f)
        if scaled:
            f *= self.step
        positions = np.flatnonzero(f <= radius)
        return int(positions.size), k, positions

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
