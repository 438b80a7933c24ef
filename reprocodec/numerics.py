"""Numerics profiles: named ways of running the networks (README, "Numerics profiles and GPUs").

A profile changes process-global torch settings (oneDNN on/off, thread count, TF32), so a
process runs exactly one: `apply_profile(name)` once, early; a second call with another name
raises. Codecs ask `current_profile()` how to place and type their networks, and call
`perturb(name, values, bound)` on every protected float tensor on the decoder side: it is the
identity except under the synthetic `noise:EPS` test profile, which adds bounded noise so that
what happens inside and beyond an error bound can be shown without special hardware.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reprocodec.errors import VerificationError

if TYPE_CHECKING:
    from reprocodec.safeguard import ErrorBound

__all__ = [
    "PROFILES",
    "Profile",
    "apply_profile",
    "current_profile",
    "perturb",
    "parse_profile",
]

# Fixed so that a noise:EPS run is reproducible from one execution to the next.
NOISE_SEED = 20241014

PROFILES = (
    "cpu",
    "cpu-nomkldnn",
    "cpu-channels-last",
    "cpu-1thread",
    "emulate-tf32",
    "emulate-splitk",
    "noise:EPS",
    "cuda",
    "cuda-tf32",
)

_NOISE_RE = re.compile(r"^noise:([0-9.eE+-]+)$")


@dataclass(frozen=True)
class Profile:
    name: str
    device: str = "cpu"
    channels_last: bool = False
    emulate: str = ""  # GPU numerics on the CPU: "tf32" or "splitk" (reprocodec.gpu_emulation)
    noise_eps: float = 0.0
    mkldnn: bool = True
    threads: int | None = None
    tf32: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"


def parse_profile(name: str) -> Profile:
    """The Profile a name stands for, without applying it (ValueError for unknown names)."""
    m = _NOISE_RE.match(name)
    if m:
        try:
            eps = float(m.group(1))
        except ValueError:
            eps = -1.0
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"noise profile needs a finite EPS >= 0, e.g. noise:1e-4, not {name}")
        return Profile(name=name, noise_eps=eps)
    table = {
        "cpu": Profile("cpu"),
        "cpu-nomkldnn": Profile("cpu-nomkldnn", mkldnn=False),
        "cpu-channels-last": Profile("cpu-channels-last", channels_last=True),
        "cpu-1thread": Profile("cpu-1thread", threads=1),
        "emulate-tf32": Profile("emulate-tf32", emulate="tf32"),
        "emulate-splitk": Profile("emulate-splitk", emulate="splitk"),
        "cuda": Profile("cuda", device="cuda"),
        "cuda-tf32": Profile("cuda-tf32", device="cuda", tf32=True),
    }
    if name not in table:
        raise ValueError(f"unknown numerics profile {name!r}; choose one of {', '.join(PROFILES)}")
    return table[name]


_applied: Profile | None = None
_noise_rng: np.random.Generator | None = None


def apply_profile(name: str) -> Profile:
    """Set this process's torch numerics for profile `name` (once per process)."""
    global _applied, _noise_rng
    profile = parse_profile(name)
    if _applied is not None:
        if _applied.name != profile.name:
            raise RuntimeError(
                f"numerics profile {_applied.name!r} is already applied in this process; "
                f"run profile {profile.name!r} in a separate process"
            )
        return _applied
    # Profiles that keep torch's defaults leave torch unimported: the point-cloud codec's CPU
    # path (gather models) runs without it, and importing it costs ~0.5 GB of RSS.
    if profile.is_cuda or profile.emulate or not profile.mkldnn or profile.threads is not None:
        _apply_torch_settings(profile)
    if profile.noise_eps > 0:
        _noise_rng = np.random.default_rng(NOISE_SEED)
    _applied = profile
    return profile


def _apply_torch_settings(profile: Profile) -> None:
    import torch

    if profile.is_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"profile {profile.name!r} needs a CUDA GPU and none is available")
    torch.backends.mkldnn.enabled = profile.mkldnn
    if profile.threads is not None:
        torch.set_num_threads(profile.threads)
    if profile.is_cuda:
        # `cuda` pins TF32 off and cuDNN to deterministic, non-benchmarked algorithms: the
        # float32 networks (point-cloud logits, the encoder's analysis) then see one summation
        # order per shape. The image decision networks run in float64, where TF32 never applies.
        torch.backends.cuda.matmul.allow_tf32 = profile.tf32
        torch.backends.cudnn.allow_tf32 = profile.tf32
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if profile.emulate:
        from reprocodec import gpu_emulation

        gpu_emulation.install(profile.emulate)


def current_profile() -> Profile:
    """The applied profile; plain `cpu` (torch defaults) when none was applied."""
    return _applied if _applied is not None else Profile("cpu")


@contextlib.contextmanager
def failures_expected() -> Iterator[None]:
    """A self-check's decode (the codecs' warm_up) under the applied profile: a
    VerificationError inside is swallowed under a noise:EPS profile, whose decoder is meant
    to fail beyond its bound (the profile's purpose is showing that failure to the user of a
    service), and raised under every other."""
    try:
        yield
    except VerificationError:
        if current_profile().noise_eps <= 0:
            raise


def perturb(name: str, values: np.ndarray, bound: ErrorBound) -> np.ndarray:
    """Decoder-side hook on protected float tensor `name`: identity unless noise:EPS is applied.

    The noise is uniform in [-EPS, EPS], scaled by |v| for a relative bound, so EPS is directly
    comparable to the bound's value: EPS below it must always decode, EPS far above must be
    detected.
    """
    del name  # every protected tensor gets the same treatment; the name is for future use
    profile = current_profile()
    if profile.noise_eps <= 0 or _noise_rng is None:
        return values
    noise = _noise_rng.uniform(-profile.noise_eps, profile.noise_eps, size=np.shape(values))
    if bound.kind == "relative":
        noise = noise * np.abs(values)
    return np.asarray(values, dtype=np.float64) + noise


def prepare_module(module: Any) -> Any:
    """Place a network as the profile says (device, memory format); dtype is per sub-network."""
    import torch

    profile = current_profile()
    module = module.to(profile.device)
    if profile.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def prepare_input(tensor: Any) -> Any:
    import torch

    profile = current_profile()
    tensor = tensor.to(profile.device)
    if profile.channels_last and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def to_host(tensor: Any, dtype: Any = None) -> np.ndarray:
    """The one way a network's output reaches numpy: moved to host memory first (a CUDA
    tensor has no .numpy()), optionally converted, contiguous."""
    t = tensor.detach().to("cpu", dtype) if dtype is not None else tensor.detach().to("cpu")
    return t.contiguous().numpy()
