"""Contract of chunked simple gated linear attention (shared by the three trees).

``chunk_simple_gla(q, k, v, *, g=None, g_gamma=None, scale=None, initial_state=None,
output_final_state=False, cu_seqlens=None, chunk_size=64) -> (o, final_state)`` in
``tops.ops`` (JAX), ``tops.gpu`` (torch, which also takes flash-linear-attention's
positional order ``q, k, v, g, g_gamma, scale, initial_state, output_final_state,
cu_seqlens``) and ``tops.cpu.simple_gla`` (float64). ``q, k [B, T, H, K]`` and
``v [B, T, H, V]`` share one dtype, bf16 or f32; ``o [B, T, H, V]`` has ``v``'s dtype;
``final_state`` is float32 ``[N, H, K, V]`` with ``output_final_state``, else None.

Recurrence, per sequence and head, for ``t = 0 .. T-1``::

    h_t = exp(g_t + gamma) * h_{t-1} + k_t^T v_t      # h is [K, V], h_{-1} = initial state
    o_t = scale * q_t h_t                              # the current token is included

``g [B, T, H]`` is a per-token log decay and ``g_gamma [H]`` a per-head constant log
decay; either, both (they add) or neither (no decay) may be given. Any finite value is
allowed (``<= 0`` in practice). ``scale`` defaults to ``K ** -0.5``.

Variable-length batches: with ``cu_seqlens`` (int32 or int64 ``[N + 1]``, ``B == 1``) the
tokens ``[cu[n], cu[n+1])`` form sequence ``n``, which starts from ``initial_state[n]``
(zeros when no initial state is given) and owns ``final_state[n]``. Valid offsets start at
0, never decrease and end at ``T``. An empty sequence (``cu[n] == cu[n+1]``) produces no
output rows and its final state is its initial state. int64 is accepted because
flash-linear-attention's callers pass ``torch.long`` offsets; the kernels index in int32.

Malformed ``cu_seqlens`` (not starting at 0, decreasing, negative, past ``T``):

* Host arrays (NumPy arrays; CPU torch tensors) are checked before any kernel is built:
  ValueError naming ``cu_seqlens`` and the broken invariant (:func:`check_cu_seqlens`).
  Lists and tuples are refused by type, like every array argument.
* Device values (JAX arrays, traced values, CUDA tensors) are not read on the host by
  default: that would stall every call on a device-to-host copy. The kernels run on the
  *repaired* offsets, computed on the device before any kernel and within the input's
  integer type (so int64 entries past int32 clip rather than wrap)::

      cu'[0] = 0,   cu'[N] = T,   cu'[n] = min(T, max(0, cu[0], ..., cu[n]))  (0 < n < N)

  (:func:`repaired_cu_seqlens` is the NumPy definition; valid offsets are unchanged). The
  result, values and gradients, is the op's on ``cu'``; every kernel reads and writes only
  inside its arrays whatever the entries are.
* ``TOPS_CHECK_CU_SEQLENS=1`` (:data:`CHECK_CU_SEQLENS_VARIABLE`) opts in to the check for
  device values too: a concrete array is copied to the host and checked on every call (a
  sync); a traced JAX value is checked when the computation runs, by a host callback
  whose ValueError surfaces as the JAX runtime error of the call.

Special values (run-time values, never checked; the same result on both backends, tested
in ``tests/ops/simple_gla/test_special_values.py``):

* ``g_t = -inf`` (or ``g_gamma[h] = -inf``: every token of head ``h``) is an exact reset:
  the total log decay is ``-inf``, ``exp(-inf) = 0``, so ``h_t = k_t^T v_t`` and nothing
  before token ``t`` reaches ``o_t`` or any later output, within a chunk or across chunk
  boundaries. The gradient w.r.t. a ``-inf`` gate is 0 (such a token adds 0 to ``d
  g_gamma``); every other gradient is the reset recurrence's. The kernels never form
  ``-inf - (-inf)``: a reset cuts every decay that crosses it to exactly 0. A reset
  multiplies the old state by 0, so a NaN or infinite state stays NaN (IEEE ``0 * inf``).
* Positive gates (``g > 0`` or ``g_gamma > 0``: a growing state) are allowed. The result
  is the recurrence's while the state and every within-chunk growth ``exp(G_i - G_j)``
  stay inside the float32 range; past it outputs overflow to ``inf`` or NaN (the float64
  reference overflows later).
* NaN or ``+-inf`` in ``q``, ``k``, ``v`` or ``initial_state``, and NaN or ``+inf`` in
  ``g`` or ``g_gamma``, are not cleaned: they propagate through IEEE arithmetic, and
  every backend yields non-finite values at exactly the same output and gradient elements
  (the chunked computations are the same on both; the values that stay finite agree within
  the usual tolerance). Other heads and other sequences (batch rows, varlen sequences) are
  unaffected, as are the forward outputs of a sequence before the chunk that holds its
  first non-finite value; gradients of the affected sequence and head may be non-finite at
  any token (they flow backwards). Wherever the float64 recurrence is non-finite, so are
  the kernels (a non-finite input never turns into a finite wrong number).

``chunk_size`` (64 or 128) only changes how the kernels block the sequence, not the
mathematical result.

Gradients (``jax.grad`` through ``tops.ops``, ``loss.backward()`` through ``tops.gpu``):
of ``q, k, v, g, g_gamma, initial_state`` for cotangents of both ``o`` and
``final_state``, each in its input's dtype, for every input the forward accepts.
``d g_gamma[h]`` is the exact derivative, the sum over every token of head ``h`` of its
total-decay gradient (flash-linear-attention returns none); ``cu_seqlens`` gets none.
First derivatives only. Reference: ``tops.cpu.simple_gla.chunk_simple_gla_grad``, the
vjp of the float64 step recurrence per sequence.

Bad input, the same on both APIs: every error is raised before any kernel is built and
names the argument; higher-order derivatives name the limit (``FIRST_DERIVATIVES_ONLY``).
The tests are ``test_<row>[tpu]`` and ``test_<row>[gpu]`` in
``tests/ops/simple_gla/test_api.py``, except the device ``cu_seqlens`` row:
``test_tpu_device_cu_seqlens`` there, and for ``tops.gpu`` (whose wrapper hands device
offsets to the launchers) ``test_gpu_launchers_repair_raw_offsets`` in
``test_gpu_robustness.py``:

================  ==============================  ============================  ====================
input             ``tops.ops`` (JAX)              ``tops.gpu`` (torch)          test_...
================  ==============================  ============================  ====================
lists, tuples     TypeError: takes JAX or NumPy   TypeError: takes torch        lists_and_tuples
                  arrays (every array argument)   tensors
NumPy scalars     ``scale``, ``chunk_size``: as   the same                      numpy_scalars
                  Python numbers, same result
wrong framework   TypeError for a torch tensor    TypeError for a JAX or NumPy  wrong_framework
                                                  array
x64 mode          f32, bf16: the bits of x64 off  float64: the same ValueError  x64_mode
                  float64: ValueError (dtype)     (torch has no x64 mode)
``B = 0``         ``o [0, T, H, V]``, final       the same                      empty_batch
                  state ``[0, H, K, V]``, empty
                  gradients
``T = 0``         ValueError: ``q must have T,    the same                      no_tokens
                  H, K >= 1``
huge ``T``        ValueError above ``B * T <=     the same                      huge_seq_len
                  MAX_TOKENS`` (int32 positions)
head-first        :class:`HeadFirstWarning` for   the same                      head_first_layout
layout            ``1 < T < H``, none otherwise
higher-order      NotImplementedError (grad of    RuntimeError at the second    higher_order
derivatives       grad, hessian, jvp of grad)     backward (create_graph=True)
bool flags        TypeError unless a Python or    the same                      bool_flags
                  NumPy bool
malformed         ValueError (NumPy)              ValueError (CPU tensor)       malformed_cu_seqlens
``cu_seqlens``,
host
malformed         repaired on the device (JAX     repaired on the device        device_cu_seqlens
``cu_seqlens``,   array, traced): the result on   (CUDA; in the interpreter
device            ``cu'``, in bounds              the launchers, tested
                                                  directly)
the same, with    ValueError (concrete); JAX      ValueError (CUDA: synced)     checked_cu_seqlens
``TOPS_CHECK_``   runtime error naming it
``CU_SEQLENS=1``  (traced)
================  ==============================  ============================  ====================

``HeadFirstWarning`` follows flash-linear-attention's rule (``T < H`` suggests ``[B, H, T,
K]`` read as ``[B, T, H, K]``) except for ``T = 1``, a decoding step, where ``T < H`` is
the normal layout and a warning on every step would only be noise.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import dataclass

import numpy as np

from tops.spec.common import (
    dtype_name,
    python_number,
    require_array,
    require_bool,
    require_dtype,
    require_rank,
)

CHUNK_SIZES = (64, 128)
QKV_DTYPES = ("bfloat16", "float32")
GATE_DTYPES = ("float32",)
STATE_DTYPES = ("float32",)
CU_SEQLENS_DTYPES = ("int32", "int64")
# Token positions are int32 in every kernel (TPU scalar memory, the GPU kernels' cu_seqlens
# and token arithmetic), and a position may reach one chunk past the last token.
MAX_TOKENS = 2**31 - 1 - max(CHUNK_SIZES)
FIRST_DERIVATIVES_ONLY = (
    "chunk_simple_gla supports first derivatives only (reverse mode): its kernels have no "
    "derivatives of their own, so a gradient of a gradient, a Hessian or a forward-mode "
    "derivative of a gradient cannot be taken"
)


CHECK_CU_SEQLENS_VARIABLE = "TOPS_CHECK_CU_SEQLENS"


def check_device_cu_seqlens() -> bool:
    """Whether ``TOPS_CHECK_CU_SEQLENS`` asks for device ``cu_seqlens`` to be synced to the
    host and checked (read at every call)."""
    return os.environ.get(CHECK_CU_SEQLENS_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def check_cu_seqlens(cu_seqlens, seq_len: int) -> None:
    """Raise ValueError naming ``cu_seqlens`` unless its entries (a host array ``[N + 1]``)
    start at 0, never decrease and end at ``seq_len``."""
    bounds = np.asarray(cu_seqlens).astype(np.int64)
    problems = []
    if bounds[0] != 0:
        problems.append(f"start at 0 (cu_seqlens[0] = {bounds[0]})")
    steps = np.flatnonzero(bounds[1:] < bounds[:-1])
    if steps.size:
        n = int(steps[0])
        problems.append(
            f"never decrease (cu_seqlens[{n}] = {bounds[n]} > cu_seqlens[{n + 1}] = "
            f"{bounds[n + 1]})"
        )
    if bounds[-1] != seq_len:
        problems.append(f"end at T = {seq_len} (cu_seqlens[-1] = {bounds[-1]})")
    if problems:
        shown = bounds.tolist() if bounds.size <= 16 else f"{bounds[:16].tolist()} ..."
        raise ValueError(f"cu_seqlens must {' and '.join(problems)}; got {shown}")


def repaired_cu_seqlens(cu_seqlens, seq_len: int) -> np.ndarray:
    """The offsets the kernels run on for device ``cu_seqlens`` (NumPy definition, int32
    ``[N + 1]``): ``cu'[0] = 0``, ``cu'[N] = T`` and ``cu'[n] = min(T, max(0, cu[0], ...,
    cu[n]))`` in between; valid offsets are returned unchanged."""
    bounds = np.clip(np.maximum.accumulate(np.asarray(cu_seqlens).astype(np.int64)), 0, seq_len)
    bounds[0], bounds[-1] = 0, seq_len
    return bounds.astype(np.int32)


class HeadFirstWarning(UserWarning):
    """``q`` looks head-first (``[B, H, T, K]``) where ``[B, T, H, K]`` is expected: ``T < H``
    with more than one token. Silence it with ``warnings.filterwarnings("ignore",
    category=HeadFirstWarning)`` when the layout is right."""


@dataclass(frozen=True)
class GLAShapes:
    """Sizes resolved by :func:`validate`.

    ``num_states`` is ``N``: the leading size of ``initial_state`` and ``final_state``
    (``B``, or the number of sequences when ``varlen``). ``scale`` is the resolved scale
    (``K ** -0.5`` when none was given).
    """

    batch: int
    seq_len: int
    heads: int
    key_dim: int
    value_dim: int
    num_states: int
    scale: float
    varlen: bool


def validate(
    q,
    k,
    v,
    *,
    g,
    g_gamma,
    scale,
    initial_state,
    output_final_state,
    cu_seqlens,
    chunk_size,
    api: str = "tops.ops",
) -> GLAShapes:
    """Raise naming the argument unless the inputs satisfy the contract: TypeError for an
    array argument that is not an array of ``api``'s framework or a flag that is not a
    bool, ValueError for everything else. Warns :class:`HeadFirstWarning` when ``q`` looks
    head-first.

    Args:
      q: ``[B, T, H, K]``, bf16 or f32, ``T, H, K >= 1`` (``B == 0`` is allowed),
        ``B * T <= MAX_TOKENS``.
      k: ``[B, T, H, K]``, the dtype and shape of ``q``.
      v: ``[B, T, H, V]``, the dtype of ``q``, ``V >= 1``.
      g: None or float32 ``[B, T, H]``.
      g_gamma: None or float32 ``[H]``.
      scale: None or a finite real Python (or NumPy scalar) number.
      initial_state: None or float32 ``[N, H, K, V]``.
      output_final_state: a Python or NumPy bool.
      cu_seqlens: None or int32 or int64 ``[N + 1]`` with ``N >= 1``; requires ``B == 1``.
      chunk_size: an int in ``CHUNK_SIZES``.
      api: ``"tops.ops"`` (JAX or NumPy arrays; also the references') or ``"tops.gpu"``
        (torch tensors).

    Returns:
      The resolved :class:`GLAShapes`.
    """
    optional = {
        "g": g,
        "g_gamma": g_gamma,
        "initial_state": initial_state,
        "cu_seqlens": cu_seqlens,
    }
    for name, array in {"q": q, "k": k, "v": v, **optional}.items():
        if array is not None or name not in optional:
            require_array(name, array, api)
    require_bool("output_final_state", output_final_state)
    require_rank("q", q, 4, "[B, T, H, K]")
    require_rank("k", k, 4, "[B, T, H, K]")
    require_rank("v", v, 4, "[B, T, H, V]")
    require_dtype("q", q, QKV_DTYPES)
    if dtype_name(k) != dtype_name(q):
        raise ValueError(f"k must have the dtype of q ({dtype_name(q)}), got {dtype_name(k)}")
    if dtype_name(v) != dtype_name(q):
        raise ValueError(f"v must have the dtype of q ({dtype_name(q)}), got {dtype_name(v)}")
    batch, seq_len, heads, key_dim = (int(d) for d in q.shape)
    if seq_len < 1 or heads < 1 or key_dim < 1:
        raise ValueError(f"q must have T, H, K >= 1, got shape {tuple(q.shape)}")
    if batch * seq_len > MAX_TOKENS:
        raise ValueError(
            f"q must have B * T <= {MAX_TOKENS} (token positions are int32), got shape "
            f"{tuple(q.shape)}"
        )
    if 1 < seq_len < heads:
        warnings.warn(
            f"q has shape {tuple(q.shape)} with T = {seq_len} < H = {heads}: "
            "chunk_simple_gla expects [B, T, H, K], not head-first [B, H, T, K]. Transpose "
            "head-first inputs (q.transpose(1, 2) in torch, jnp.swapaxes(q, 1, 2) in JAX), or "
            'silence this with warnings.filterwarnings("ignore", category=HeadFirstWarning) '
            "(tops.spec.simple_gla.HeadFirstWarning)",
            HeadFirstWarning,
            stacklevel=3,
        )
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if tuple(v.shape[:3]) != (batch, seq_len, heads):
        raise ValueError(
            f"v must have shape [B, T, H, V] = [{batch}, {seq_len}, {heads}, V], "
            f"got {tuple(v.shape)}"
        )
    value_dim = int(v.shape[3])
    if value_dim < 1:
        raise ValueError(f"v must have V >= 1, got shape {tuple(v.shape)}")

    if g is not None:
        require_rank("g", g, 3, "[B, T, H]")
        require_dtype("g", g, GATE_DTYPES)
        if tuple(g.shape) != (batch, seq_len, heads):
            raise ValueError(f"g must have shape {(batch, seq_len, heads)}, got {tuple(g.shape)}")
    if g_gamma is not None:
        require_rank("g_gamma", g_gamma, 1, "[H]")
        require_dtype("g_gamma", g_gamma, GATE_DTYPES)
        if tuple(g_gamma.shape) != (heads,):
            raise ValueError(f"g_gamma must have shape ({heads},), got {tuple(g_gamma.shape)}")

    if scale is None:
        resolved_scale = key_dim**-0.5
    else:
        value = None if isinstance(scale, bool) else python_number(scale)
        if value is None or not math.isfinite(value):
            raise ValueError(f"scale must be None or a finite real number, got {scale!r}")
        resolved_scale = value

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise ValueError(f"chunk_size must be an int in {CHUNK_SIZES}, got {chunk_size!r}")
    if int(chunk_size) not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")

    varlen = cu_seqlens is not None
    if varlen:
        require_rank("cu_seqlens", cu_seqlens, 1, "[N + 1]")
        require_dtype("cu_seqlens", cu_seqlens, CU_SEQLENS_DTYPES)
        if batch != 1:
            raise ValueError(f"cu_seqlens requires B == 1 (packed sequences), got B = {batch}")
        num_states = int(cu_seqlens.shape[0]) - 1
        if num_states < 1:
            raise ValueError(
                f"cu_seqlens must have N + 1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}"
            )
    else:
        num_states = batch

    if initial_state is not None:
        expected = (num_states, heads, key_dim, value_dim)
        require_rank("initial_state", initial_state, 4, "[N, H, K, V]")
        require_dtype("initial_state", initial_state, STATE_DTYPES)
        if tuple(initial_state.shape) != expected:
            raise ValueError(
                f"initial_state must have shape [N, H, K, V] = {expected}, "
                f"got {tuple(initial_state.shape)}"
            )

    return GLAShapes(
        batch=batch,
        seq_len=seq_len,
        heads=heads,
        key_dim=key_dim,
        value_dim=value_dim,
        num_states=num_states,
        scale=float(resolved_scale),
        varlen=varlen,
    )
