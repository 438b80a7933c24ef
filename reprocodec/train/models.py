"""The shipped architectures, by the names used in the weights metadata."""

from __future__ import annotations

from compressai.models import CompressionModel, MeanScaleHyperprior, ScaleHyperprior

ARCHITECTURES: dict[str, type[CompressionModel]] = {
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
}


def build_model(architecture: str, N: int, M: int) -> CompressionModel:
    try:
        return ARCHITECTURES[architecture](N, M)
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None
