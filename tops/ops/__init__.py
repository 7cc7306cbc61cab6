"""Pallas TPU kernels with JAX APIs (Mosaic on TPU, Pallas TPU interpret mode elsewhere)."""

from tops.ops.sampling import sample
from tops.ops.selection import topk
from tops.ops.simple_gla import chunk_simple_gla
from tops.ops.softmax import temperature_softmax

__all__ = ["chunk_simple_gla", "sample", "temperature_softmax", "topk"]
