"""Triton GPU kernels (torch in, torch out); the Triton interpreter on CPU when no GPU.
Needs the ``gpu`` extra (torch and triton).

:func:`tops.backends.configure_triton` runs first: Triton reads ``TRITON_INTERPRET`` when a
kernel is defined, so it must be set before any kernel module is imported.
"""

from tops.backends import configure_triton, require_gpu

require_gpu()  # an ImportError that names ``pip install 'tops[gpu]'``, not torch's own
configure_triton()

from tops.gpu.sampling import sample  # noqa: E402
from tops.gpu.selection import topk  # noqa: E402
from tops.gpu.simple_gla import chunk_simple_gla  # noqa: E402
from tops.gpu.softmax import (  # noqa: E402
    temperature_softmax,
    temperature_softmax_,
)

__all__ = ["chunk_simple_gla", "sample", "temperature_softmax", "temperature_softmax_", "topk"]
