"""The shipped architectures, by the names used in the weights metadata."""

from __future__ import annotations

from compressai.models import CompressionModel, MeanScaleHyperprior, ScaleHyperprior

from reprocodec.image.checkerboard import MeanScaleCheckerboard

# mbt2018-mean-checkerboard shares every tensor of mbt2018-mean (load_init copies them) and
# adds context_prediction / entropy_parameters; its forward is the two-pass checkerboard one.
ARCHITECTURES: dict[str, type[CompressionModel]] = {
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "mbt2018-mean-checkerboard": MeanScaleCheckerboard,
}


def build_model(architecture: str, N: int, M: int) -> CompressionModel:
    try:
        return ARCHITECTURES[architecture](N, M)
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None
