"""Contract of top-k / top-p / min-p sampling, shared by the TPU, GPU and CPU trees.

``tops.ops.sample``, ``tops.gpu.sample`` and ``tops.cpu.sample`` ``(logits, *,
temperature, seed, step, top_k=0, top_p=1.0, min_p=0.0, max_k=None, debug=False)``
return ``(next_tokens int32 [B], valid bool [B])`` and, with ``debug``, a mapping of
:data:`DEBUG_NAMES` in that order: ``greedy_sampled`` int32 ``[B]``,
``topk_logits_unsorted [B, V]`` (logits dtype), ``topk_topp_unnorm_probs_i32_unsorted``
int32 ``[B, V]``, ``random_unnorm_cdf_sampled`` (high, low) uint32 ``[B]`` and
``next_tokens``. ``max_k`` None takes the arbitrary-k path; an int, the bounded-k path
(step 2), whose result the reference gives for the same ``max_k``.

Every step that decides a token is integer arithmetic or a fixed sequence of IEEE
float32 add, subtract, multiply, compare, floor and exact power-of-two scaling, never a
transcendental, a division, a fused multiply-add or a float sum in a platform-chosen
order, so the three trees compute the same bits. ``quantize`` is a float32 Horner
evaluation of ``EXP_COEFFICIENTS`` and ``reciprocal`` ``NEWTON_STEPS`` Newton steps, each
operation correctly rounded on TPU, GPU and NumPy; zeros and subnormals are flushed to
``+0.0`` by a bit test, so flush-to-zero and IEEE hardware agree; no product feeding an
add may be contracted into an FMA (the GPU kernels are compiled with
``enable_fp_fusion=False``, the Pallas kernels keep XLA from fusing); sums, thresholds
and the CDF are integers (int32 limbs on TPU), as is threefry2x32. The CPU tree
(``tops/cpu/sampling.py``: ``quantize``, ``reciprocal``) is the executable definition;
this module holds the constants and the argument checks.

Per row ``b`` of ``logits [B, V]`` (``x`` below), in this order:

0. ``valid`` = the row has no NaN and at least one finite logit. An invalid row returns
   ``next_tokens = greedy_sampled``, all-zero integer probabilities and a zero draw; its
   ``topk_logits_unsorted`` is still the top-k of step 2.
1. ``greedy_sampled`` = the first index of the maximum in the top-k op's order
   (``tops/spec/topk.py``: IEEE total order, ``+0.0`` above ``-0.0``, NaN last, lower
   index first among equals). ``m`` = that logit.
2. top-k on the raw logits with the top-k op's order: the row keeps its first ``k``
   entries, ``k = V`` when ``top_k <= 0`` or ``top_k >= V``; with a static ``max_k``
   (the bounded-k path) ``k = min(k, max_k)``. ``topk_logits_unsorted`` is ``x`` on the
   kept entries and ``-inf`` elsewhere (dtype of ``logits``).
3. Temperature and quantisation (:data:`PROB_ONE` = 2**30 is the maximum's weight). A
   row with ``temperature`` not ``>= TINY`` (zero, negative, NaN, subnormal) is greedy:
   its integer probabilities are ``PROB_ONE`` at ``greedy_sampled`` and 0 elsewhere, its
   draw is 0 and its token ``greedy_sampled``. Otherwise ``s = reciprocal(T) * LOG2E``
   (``reciprocal`` is 0 for ``T >= 2**126``; a Newton iteration otherwise), and each kept
   entry gets ``q = quantize(m, x, s)``, an integer in ``[0, PROB_ONE]`` approximating
   ``PROB_ONE * exp((x - m) / T)`` with relative error below about ``2**-21``; entries
   outside the top-k get 0.
4. ``S = sum(q)`` (exact, below ``2**48``). min-p keeps ``q >= ceil(min_p * PROB_ONE)``
   (``min_p <= 2**-31`` or NaN disables it; ``min_p > 1`` acts as 1); ties at the
   threshold are kept. top-p (enabled iff ``top_p < 1``) rounds ``top_p`` down to a
   multiple of ``2**-16`` (``p16 = floor(max(top_p, 0) * 2**16)``) and keeps an entry
   iff its ``q`` is ``PROB_ONE`` or the mass strictly above it is small:
   ``sum(q_j for q_j > q) * 2**16 < p16 * S``; equal ``q`` are kept or dropped together,
   and the most probable entries always stay. Both masks are computed from the same
   ``q`` and ``S``; ``topk_topp_unnorm_probs_i32_unsorted`` is ``q`` with both applied,
   and ``S'`` its sum (at least ``PROB_ONE``).
5. The draw: for ``attempt = 0, 1, ...`` (at most :data:`MAX_ATTEMPTS`), the 64 bits
   ``(hi, lo) = threefry2x32_20(key=(seed, step), counter=(attempt, 0))``, keep their low
   ``L = bit_length(S' - 1)`` bits and accept the first value below ``S'`` (rejection
   sampling: exactly uniform on ``[0, S')``, at most ``MAX_ATTEMPTS`` tries, each
   accepted with probability above 1/2; if all fail, the last value minus ``S'``). That
   integer is ``random_unnorm_cdf_sampled`` (returned as its high and low uint32), and
   ``next_tokens`` is the first index, in vocabulary order, whose inclusive integer
   prefix sum exceeds it.

A row's token depends only on its own logits, parameters, seed and step: never on its
position, the batch size or padding.

A parameter given as a number must be in range (:func:`validate`: ``temperature >= 0``,
``top_p`` and ``min_p`` in ``[0, 1]``); the rules above for NaN, negative and larger
values are those of per-row arrays, whose values are only known at run time.

Bad input: one row per class of input; ``tops.cpu.sampling`` validates as ``tops.ops``.
The tests are ``test_<row>[tpu]`` and ``test_<row>[gpu]`` in
``tests/ops/sampling/test_api.py``.

+----------------+-------------------------+-------------------------+-----------------------------+
| input          | tops.ops                | tops.gpu                | test_...                    |
+================+=========================+=========================+=============================+
| lists, tuples  | TypeError naming the    | TypeError naming the    | lists_and_tuples            |
|                | argument: "logits must  | argument: "... must be  |                             |
|                | be a JAX or NumPy array | a torch tensor for      |                             |
|                | for tops.ops"           | tops.gpu"               |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| NumPy scalars  | taken and checked as    | the same                | numpy_scalars               |
|                | the Python number;      |                         |                             |
|                | max_k may be a NumPy    |                         |                             |
|                | int                     |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| [] arrays      | one value for every     | [] tensors: the same    | zero_dim_arrays             |
|                | row, also traced under  |                         |                             |
|                | jax.jit                 |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| wrong          | torch tensors:          | JAX or NumPy arrays:    | wrong_framework             |
| framework      | TypeError naming the    | TypeError naming it     |                             |
|                | argument                |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| x64 mode       | the same bits (kernels  | no effect; float64      | x64_mode                    |
|                | traced with x64 off; a  | logits: the same        |                             |
|                | traced Python float,    | ValueError              |                             |
|                | float64 there, is taken |                         |                             |
|                | as a number); float64   |                         |                             |
|                | logits: ValueError      |                         |                             |
|                | "logits must have       |                         |                             |
|                | dtype"                  |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| bool flags     | debug: a Python or      | the same                | bool_flags                  |
|                | NumPy bool, else        |                         |                             |
|                | TypeError naming it     |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| B = 0          | empty results of the    | the same                | empty_batch                 |
|                | documented dtypes, [0]  |                         |                             |
|                | and [0, V]              |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| V = 1; V = 0   | token 0 on every row; V | the same                | one_column                  |
|                | = 0: ValueError naming  |                         |                             |
|                | logits                  |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| huge V         | V > MAX_VOCAB = 2**18:  | the same ValueError     | huge_vocab                  |
|                | ValueError naming the   |                         |                             |
|                | limit                   |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| numbers out of | ValueError naming the   | the same ValueError     | numbers_out_of_range        |
| range          | argument: temperature < |                         |                             |
|                | 0 or NaN; top_p, min_p  |                         |                             |
|                | outside [0, 1] or NaN;  |                         |                             |
|                | top_k, seed, step not   |                         |                             |
|                | whole; seed, step       |                         |                             |
|                | outside [0, 2**32);     |                         |                             |
|                | max_k outside [1,       |                         |                             |
|                | min(V, 256)]; a bool    |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
| per-row arrays | run-time values, steps  | the same                | per_row_arrays_out_of_range |
| out of range   | 3-5: temperature below  |                         |                             |
|                | TINY or NaN is greedy;  |                         |                             |
|                | top_p < 0 acts as 0, >= |                         |                             |
|                | 1 or NaN disables;      |                         |                             |
|                | min_p > 1 acts as 1, <= |                         |                             |
|                | 2**-31 or NaN disables; |                         |                             |
|                | top_k <= 0 or >= V      |                         |                             |
|                | disables; seed, step    |                         |                             |
|                | modulo 2**32            |                         |                             |
+----------------+-------------------------+-------------------------+-----------------------------+
"""

from __future__ import annotations

import math
import numbers

from tops.spec.common import python_number, require_array, require_dtype, require_rank

INPUT_DTYPES = ("bfloat16", "float16", "float32")
INTEGER_DTYPES = ("int32", "int64", "uint32")
FLOAT_DTYPES = ("float32",)

MAX_VOCAB = 2**18  # S <= V * PROB_ONE must stay below 2**48
PROB_BITS = 30
PROB_ONE = 2**PROB_BITS  # the integer weight of the maximum logit
TOP_P_BITS = 16  # top_p is rounded down to a multiple of 2**-16
MAX_ATTEMPTS = 64  # rejection-sampling tries (each fails with probability < 1/2)
BOUNDED_MAX_K = 256  # the bounded-k path's largest static max_k (the top-k fast path)

TINY = 2.0**-126  # the smallest normal float32: below it values flush to zero
RECIPROCAL_LIMIT = 2.0**126  # temperatures at or above it act as infinite
# float32 constants of the quantisation; every backend uses these exact values.
LOG2E = 1.4426950408889634  # rounded to float32 where used
LN2 = 0.6931471805599453  # rounded to float32 where used
NEWTON_A = 24.0 / 17.0  # the reciprocal's initial guess on [1, 2): A - B * M
NEWTON_B = 8.0 / 17.0
NEWTON_STEPS = 3
EXP_TERMS = 10  # 2**-f = exp(-t), t = f * LN2 in [0, ln 2): Taylor terms t**0 .. t**9
# Taylor coefficients of exp(-t), (-1)**j / j!, rounded to float32 where used.
EXP_COEFFICIENTS = tuple((-1.0) ** j / math.factorial(j) for j in range(EXP_TERMS))

# Names and order of the debug arrays.
DEBUG_NAMES = (
    "greedy_sampled",
    "topk_logits_unsorted",
    "topk_topp_unnorm_probs_i32_unsorted",
    "random_unnorm_cdf_sampled",
    "next_tokens",
)

# threefry2x32 with 20 rounds (Salmon et al., SC'11), as in Random123 and JAX.
THREEFRY_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
THREEFRY_PARITY = 0x1BD11BDA
THREEFRY_ROUNDS = 20


def _traced_number(value) -> bool:
    """Whether ``value`` is a weakly typed JAX ``[]``: a Python number traced by
    ``jax.jit`` (float64 under ``jax_enable_x64``), rounded to float32 like the number."""
    return getattr(value, "weak_type", False) and tuple(value.shape) == ()


def _check_row_parameter(name: str, value, batch: int, kind: str, dtypes, check_number, api):
    """``value`` is a Python or NumPy number (checked by ``check_number``) or an array of
    ``api``'s framework with a dtype in ``dtypes`` (a float parameter also takes a traced
    number) and shape ``[]`` or ``[B]``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {kind} or an array [B], got a bool")
    number = python_number(value)
    if number is not None:
        check_number(number)
        return
    require_array(name, value, api)
    if not (dtypes == FLOAT_DTYPES and _traced_number(value)):
        require_dtype(name, value, dtypes)
    if tuple(value.shape) not in ((), (batch,)):
        raise ValueError(f"{name} must have shape () or ({batch},), got {tuple(value.shape)}")


def validate(logits, *, temperature, seed, step, top_k, top_p, min_p, max_k=None, api: str) -> None:
    """Raise ValueError (TypeError for a non-array) naming the argument unless the inputs
    satisfy the contract; ``api`` is ``"tops.ops"`` or ``"tops.gpu"``, whose arrays
    (``tops.spec.common.require_array``) every array argument must be.

    ``logits`` is ``[B, V]`` in bf16, f16 or f32 with ``1 <= V <= MAX_VOCAB``. Each
    parameter is a Python or NumPy number, or an array ``[B]`` (one value per row) or
    ``[]`` (one value for every row: a traced scalar under ``jax.jit``): ``temperature``,
    ``top_p`` and ``min_p`` float32 (or a weakly typed JAX ``[]``, which is what a traced
    Python number is: float64 under ``jax_enable_x64``); ``top_k``, ``seed`` and ``step``
    int32, int64 or uint32 (seed and step are taken modulo 2**32). A number is checked now:
    ``temperature >= 0``, ``top_p`` and ``min_p`` in ``[0, 1]``, integers whole (``top_k
    <= 0`` disables top-k), ``seed`` and ``step`` in ``[0, 2**32)``; bools are refused.
    Array entries are run-time values and get the documented result whatever they are.
    ``max_k`` is None (the arbitrary-k path) or a Python int in ``[1, min(V,
    BOUNDED_MAX_K)]``.
    """
    require_array("logits", logits, api)
    require_rank("logits", logits, 2, "[B, V]")
    require_dtype("logits", logits, INPUT_DTYPES)
    batch, vocab = logits.shape
    if not 1 <= vocab <= MAX_VOCAB:
        raise ValueError(
            f"logits must have 1 <= V <= MAX_VOCAB = {MAX_VOCAB} columns, got shape "
            f"{tuple(logits.shape)}"
        )

    def greedy_at_zero(number):
        if not number >= 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {number}")

    def fraction(name, disabling):
        def check(number):
            if not 0 <= number <= 1:
                raise ValueError(
                    f"{name} must be in [0, 1] ({disabling} disables it), got {number}"
                )

        return check

    def whole(name, low=None, high=None):
        def check(number):
            if not math.isfinite(number) or number != int(number):
                raise ValueError(f"{name} must be an integer, got {number}")
            if low is not None and not low <= number < high:
                raise ValueError(f"{name} must be in [{low}, {high}), got {int(number)}")

        return check

    real, integer = "a number", "an integer"
    for name, value, kind, dtypes, check in (
        ("temperature", temperature, real, FLOAT_DTYPES, greedy_at_zero),
        ("top_p", top_p, real, FLOAT_DTYPES, fraction("top_p", 1)),
        ("min_p", min_p, real, FLOAT_DTYPES, fraction("min_p", 0)),
        ("top_k", top_k, integer, INTEGER_DTYPES, whole("top_k")),
        ("seed", seed, integer, INTEGER_DTYPES, whole("seed", 0, 2**32)),
        ("step", step, integer, INTEGER_DTYPES, whole("step", 0, 2**32)),
    ):
        _check_row_parameter(name, value, batch, kind, dtypes, check, api)
    if max_k is not None:
        if isinstance(max_k, bool) or not isinstance(max_k, numbers.Integral):
            raise ValueError(f"max_k must be None or a Python int, got {type(max_k).__name__}")
        if not 1 <= max_k <= min(vocab, BOUNDED_MAX_K):
            raise ValueError(
                f"max_k must satisfy 1 <= max_k <= min(V, {BOUNDED_MAX_K}) = "
                f"{min(vocab, BOUNDED_MAX_K)}, got {max_k}"
            )


def validate_weights(logits, temperature, *, api: str) -> None:
    """:func:`validate` for ``integer_weights``: ``sample``'s check with top-k, top-p and
    min-p disabled (and seed and step unused)."""
    validate(
        logits, temperature=temperature, seed=0, step=0, top_k=0, top_p=1.0, min_p=0.0, api=api
    )
