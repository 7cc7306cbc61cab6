"""float64 golden references, written for clarity, not speed (NumPy in, float64 out)."""

from tops.cpu.sampling import sample
from tops.cpu.temperature_softmax import temperature_softmax, temperature_softmax_vjp
from tops.cpu.topk import topk

__all__ = ["sample", "temperature_softmax", "temperature_softmax_vjp", "topk"]
