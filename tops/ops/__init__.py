"""Pallas TPU kernels with JAX APIs (Mosaic on TPU, Pallas TPU interpret mode elsewhere)."""

from tops.ops.sampling import sample
from tops.ops.simple_gla import chunk_simple_gla
from tops.ops.temperature_softmax import temperature_softmax
from tops.ops.topk import topk

__all__ = ["chunk_simple_gla", "sample", "temperature_softmax", "topk"]
