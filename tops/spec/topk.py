"""Contract of exact top-k (shared by the TPU, GPU and CPU trees).

``tops.ops.topk(x, k, *, max_k=None)`` (JAX), ``tops.gpu.topk`` (torch) and
``tops.cpu.topk`` (NumPy): ``x [B, V]`` bf16/f16/f32 with any ``B >= 0`` and
``1 <= V <= MAX_VOCAB``; ``k`` a Python int in ``[1, V]``, or an integer array with a
static ``max_k`` in ``[1, V]``. Returns ``(values [B, w]`` in ``x``'s dtype,
``indices [B, w]`` int32), ``w = k`` or ``max_k``.

The order, on every backend: values descending in IEEE total order, except that NaN
(of either sign) ranks below every other value, ``-inf`` included; so ``+0.0`` ranks
above ``-0.0`` (as in ``jax.lax.top_k``) and ``-inf`` is an ordinary value below every
finite one. Among equal values (and among NaNs) the lower index comes first. A row's
top-k values and indices are therefore fully determined, and each returned value is the
input element at its index, bit for bit. On NaN-free rows the result equals
``jax.lax.top_k``'s (which ranks NaN first). When a row has fewer than ``k`` non-NaN
values, its NaNs fill the last places in index order.

Per-row ``k`` (an integer array ``[B]``, or ``[]`` for every row, with a static
``max_k``): row ``b`` keeps its first ``clip(k[b], 0, max_k)`` entries; the entries past
them hold ``FILL_INDEX`` and a value of ``-inf``.

Bad input: one row per class of input; ``tops.cpu.topk`` validates as ``tops.ops``. The
tests are ``test_<row>[tpu]`` and ``test_<row>[gpu]`` in ``tests/ops/topk/test_api.py``.

+----------------+-------------------------+-------------------------+-----------------------------+
| input          | tops.ops                | tops.gpu                | test_...                    |
+================+=========================+=========================+=============================+
| lists, tuples  | TypeError naming x or   | TypeError naming x or   | lists_and_tuples            |
|                | k: "x must be a JAX or  | k: "x must be a torch   |                             |
|                | NumPy array for         | tensor for tops.gpu"    |                             |
|                | tops.ops"               |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| NumPy scalars  | k, max_k: taken and     | the same                | numpy_scalars               |
|                | checked as Python ints  |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| [] arrays      | k (with max_k): one     | [] tensors: the same    | zero_dim_arrays             |
|                | count for every row,    |                         |                             |
|                | also traced under       |                         |                             |
|                | jax.jit                 |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| wrong          | torch tensors:          | JAX or NumPy arrays:    | wrong_framework             |
| framework      | TypeError naming x or k | TypeError naming x or k |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| x64 mode       | the same values and     | no effect; float64 x:   | x64_mode                    |
|                | indices (kernels traced | the same ValueError     |                             |
|                | with x64 off); float64  |                         |                             |
|                | x: ValueError "x must   |                         |                             |
|                | have dtype"             |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| B = 0          | values and indices [0,  | the same                | empty_batch                 |
|                | w]                      |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| V = 1; V = 0   | k = 1: the column       | the same                | one_column                  |
|                | itself, index 0; V = 0: |                         |                             |
|                | ValueError naming x     |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| huge V         | V > MAX_VOCAB = (2**16  | the same ValueError     | huge_vocab                  |
|                | - 1) * 256: ValueError  |                         |                             |
|                | naming the limit        |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| numbers out of | ValueError naming the   | the same ValueError     | numbers_out_of_range        |
| range          | argument: k outside [1, |                         |                             |
|                | V], max_k outside [1,   |                         |                             |
|                | V], a float or bool k,  |                         |                             |
|                | max_k with an int k or  |                         |                             |
|                | missing with an array k |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| per-row k out  | run-time values:        | the same                | per_row_k_out_of_range      |
| of range       | clipped to [0, max_k]   |                         |                             |
|                | (int64 without wrap)    |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
"""

from __future__ import annotations

import numbers

from tops.spec.common import require_array, require_dtype, require_rank

INPUT_DTYPES = ("bfloat16", "float16", "float32")
K_DTYPES = ("int32", "int64")
FILL_INDEX = -1
# Both kernels take their fast path for k (or max_k) up to this.
FAST_PATH_MAX_K = 256
# The widest row: the GPU's general path (k > 256) sorts runs of 256 columns, one program
# per run on CUDA grid axis 1, which holds at most 2**16 - 1 programs. The TPU has no
# tighter limit (rows past 2**19 columns take an XLA sort; indices are int32).
MAX_VOCAB = (2**16 - 1) * 256


def _static_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int, got {type(value).__name__} {value!r}")
    return int(value)


def validate(x, k, max_k=None, *, api: str) -> tuple[int, bool]:
    """Raise ValueError (TypeError for a non-array) naming the argument unless the inputs
    satisfy the contract; ``api`` is ``"tops.ops"`` or ``"tops.gpu"``, whose arrays
    (``tops.spec.common.require_array``) ``x`` and an array ``k`` must be.

    ``x`` is ``[B, V]`` in bf16, f16 or f32 with ``1 <= V <= MAX_VOCAB``. Either ``k`` is
    a Python (or NumPy) int with ``1 <= k <= V`` and ``max_k`` is None, or ``k`` is an
    int32/int64 array ``[B]`` (or ``[]``, one count for every row) and ``max_k`` a
    Python int with ``1 <= max_k <= V``.

    Returns ``(width, per_row)``: the number of output columns and whether ``k`` is
    per row.
    """
    require_array("x", x, api)
    require_rank("x", x, 2, "[B, V]")
    require_dtype("x", x, INPUT_DTYPES)
    batch, vocab = x.shape
    if vocab < 1:
        raise ValueError(f"x must have V >= 1 columns, got shape {tuple(x.shape)}")
    if vocab > MAX_VOCAB:
        raise ValueError(
            f"x must have V <= MAX_VOCAB = {MAX_VOCAB} columns (the GPU kernel's grid "
            f"limit), got shape {tuple(x.shape)}"
        )
    if isinstance(k, numbers.Number):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(
                f"k must be a Python int or an integer array [B], got {type(k).__name__} {k!r}"
            )
        k = int(k)
        if max_k is not None:
            raise ValueError("max_k must be None when k is an int (it is the output width)")
        if not 1 <= k <= vocab:
            raise ValueError(f"k must satisfy 1 <= k <= V = {vocab}, got {k}")
        return k, False
    require_array("k", k, api)
    require_dtype("k", k, K_DTYPES)
    if tuple(k.shape) not in ((), (batch,)):
        raise ValueError(f"k must have shape () or ({batch},), got {tuple(k.shape)}")
    if max_k is None:
        raise ValueError("max_k must be given (a Python int) when k is an array")
    width = _static_int("max_k", max_k)
    if not 1 <= width <= vocab:
        raise ValueError(f"max_k must satisfy 1 <= max_k <= V = {vocab}, got {width}")
    return width, True
