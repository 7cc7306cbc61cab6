"""Combine functions for ``tl.reduce`` and ``tl.associative_scan`` in the Triton kernels.

:data:`add_combine`, :data:`max_combine` and :data:`min_combine` are what ``tl.sum``,
``tl.max``/``tl.min`` and ``tl.cumsum`` expand to. The kernels call ``tl.reduce`` with them
directly, in their inner loops, because the Triton interpreter charges each call of a
``@triton.jit`` helper such as ``tl.sum`` for re-patching ``triton.language`` (1.1 ms per
4096-element sum against 0.2 ms for the ``tl.reduce`` it wraps, Triton 3.9 on one core).
"""

from __future__ import annotations

from triton.language import standard

# Triton's own combine functions, not equivalent ones written here: the interpreter runs a
# reduction or scan as one NumPy call (np.sum, np.nanmax, np.cumsum) only when the combine
# function *is* one of these, and any other one element by element in Python (about 1 s
# per 4096-element sum). Triton has no public name for them: this is the one place in tops
# that reaches into its private API.
add_combine = standard._sum_combine
max_combine = standard._elementwise_max
min_combine = standard._elementwise_min
