"""Pallas TPU kernels with JAX APIs (Mosaic on TPU, Pallas TPU interpret mode elsewhere)."""

from tops.ops.sampling import sample
from tops.ops.temperature_softmax import temperature_softmax
from tops.ops.topk import topk

__all__ = ["sample", "temperature_softmax", "topk"]
