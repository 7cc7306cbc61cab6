"""float64 golden references, written for clarity, not speed (NumPy in, float64 out)."""

from tops.cpu.sampling import sample
from tops.cpu.selection import topk
from tops.cpu.softmax import temperature_softmax, temperature_softmax_vjp

__all__ = ["sample", "temperature_softmax", "temperature_softmax_vjp", "topk"]
