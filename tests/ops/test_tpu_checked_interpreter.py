"""Every Pallas kernel under the checked TPU interpreter: race detection and NaN-filled
uninitialised memory, at small shapes, against the plain interpreter.

``TOPS_TPU_INTERPRET=checked`` makes ``tops.backends.pallas_interpret()`` return
``pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan")``: the kernels
then run in JAX's TPU interpreter (simulated HBM, VMEM, DMAs and semaphores, a vector-
clock race detector, every allocation filled with NaN, or the largest integer for
integer dtypes). Without it ``interpret=True`` runs them in the generic HLO interpreter.
Each case below runs one kernel path through its launcher (the public wrapper where it
reaches the path at a small shape) under both and asserts:

1. no race was detected, in any of the case's ``pallas_call`` launches, and every launch
   of the path ran under the checked interpreter (the launch count is part of the case);
2. the results are bit-identical to the plain interpreter's (dtype, shape and bytes);
   for the matmul kernels (simple GLA), within ``MATMUL_ROUNDING`` of each result's
   largest magnitude instead (below);
3. the results are finite wherever the plain run's are, and the plain run holds no NaN
   at all (the inputs are finite and chosen so that no result is NaN).

Shapes leave partial row, column, chunk and vocabulary blocks, where the interpreters
pad reads with uninitialised values. Every run is compiled under one outer ``jax.jit``
with XLA's cheap CPU settings (``_FAST_COMPILE``, the options of
``jax_disable_most_optimizations``): compiling the interpreters is most of the time (a
third less so), and the kernels' launches and arithmetic are the same inside it.

Why simple GLA is compared differently. The two interpreters are different XLA programs,
and XLA's CPU backend does not round a float32 dot the same way in both: at the time of
writing the varlen case differed from the plain run in every result (8225 of its 45000
``o`` elements; at most 1.5e-6 of a result's largest magnitude, up to 4e-4 relative on
near-cancelling elements; no NaN, no race; the same in one- and two-core checked runs),
and changing only the compile options moves the plain run by as much, while the batched
case happened to agree. A kernel depending on how either interpreter keeps blocks
resident, or reading memory it never wrote, differs by far more than rounding (NaN, for
the float32 memory these kernels keep), so the tolerance loses nothing for them (tried:
the NaN-filled checked runs of both cases equal zero-filled ones bit for bit).

How a race is reported (JAX 0.10.2, ``envs/main.txt``). The interpreter prints ``RACE
DETECTED`` and sets ``races_found`` on a ``RaceDetectionState``
(``jax/_src/pallas/mosaic/interpret/race_detection_state.py``), as the docstring of
``InterpretParams.detect_races`` says ("``races.races_found`` will be set to True"); no
exception is raised and nothing about races is public (``jax.experimental.pallas.tpu``
exports only ``InterpretParams``, ``force_tpu_interpret_mode``,
``set_tpu_interpret_mode`` and ``reset_tpu_interpret_mode_state``). The module global
``jax._src.pallas.mosaic.interpret.interpret_pallas_call.races`` holds that state, but
``_initialize_shared_memory`` replaces it with a fresh ``RaceDetectionState`` at every
launch, so after a path of several kernels (the sampler runs three) it would only tell
about the last one. This module therefore relies on the class name
``interpret_pallas_call.RaceDetectionState``, which ``_initialize_shared_memory`` looks
up at run time, and on its ``races_found`` field: a monkeypatched subclass records every
state the launches create, so each launch is checked (and counted), cached executables
included; were the class renamed, no state would be recorded and the launch count would
fail rather than pass quietly. The printed ``RACE DETECTED`` is checked too (``capfd``).
``pltpu.reset_tpu_interpret_mode_state`` (public) runs after each test, as the
interpreter asks after an exception.

What the fills can and cannot show. The plain HLO interpreter also fills scratch,
unwritten output and the padding of partial blocks with NaN for floats, but with the
*smallest* integer for integers (``jax._src.pallas.primitives.uninitialized_value``), and
it copies blocks eagerly. So an uninitialised integer read reaching a result changes the
bits (assertion 2), and an uninitialised float read reaching a result is NaN in both runs
and fails the no-NaN check of assertion 3. A float read that only enters a comparison
(``NaN >= 0`` is false in both) goes unseen: a third run with
``uninitialized_memory="zero"`` would see it (tried: a planted one fails that
comparison, passes this sweep), at a third compilation per case, about half as much time
again. Planted bugs below show the other two failing, and a DMA race failing assertion 1
(and 2: the checked interpreter runs the copy only at its wait, so the early read sees
NaN).

Races: with the default ``num_cores_or_threads=1`` the grid runs in order on one
simulated core and every pipelined block copy is ordered by the core's clock, so only
explicit asynchronous copies and semaphores can race; none of the kernels use them. Two
grid steps of a ``"parallel"`` dimension writing the same output block are *not* caught
with one core (tried: no race); with ``num_cores_or_threads=2`` they are. A one-off run
of every case below with two simulated cores (``pltpu.InterpretParams`` patched to
``num_cores_or_threads=2``; the per-core bodies then run as separate computations that
``_FAST_COMPILE`` does not reach) found no race and passed every assertion, in about 1.6
times the time, so the default suite keeps the setting of ``tops.backends``.

Randomness: ``pltpu.prng_random_bits`` returns zeros in interpret mode, but the samplers
compute threefry themselves from the per-row seed and step (``tops.ops.sampling.kernel``),
so both interpreters draw the same tokens and no seed needs special handling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.backends import pallas_interpret, tpu_mode
from tops.ops.sampling import integer_weights, sample
from tops.ops.simple_gla import chunk_simple_gla
from tops.ops.softmax import kernel as softmax_kernel
from tops.ops.softmax import temperature_softmax
from tops.precision.testing import bits

pytestmark = pytest.mark.skipif(
    tpu_mode() != "tpu-interpret", reason="the checked interpreter needs tpu-interpret mode"
)

CHECKED = "TOPS_TPU_INTERPRET"
RACE_MESSAGE = "RACE DETECTED"
_RACE_STATE = interpret_pallas_call.RaceDetectionState
# Simple GLA against the plain run, relative to each result's largest magnitude: float32
# rounding of differently compiled dots, 1.5e-6 at most measured (module docstring).
MATMUL_ROUNDING = 2.0**-14
# What jax_disable_most_optimizations sets, for these compilations only: XLA's CPU
# compilation of the interpreters is most of this module's time (about a third less so).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(autouse=True)
def _fresh_interpreter_state():
    yield
    pltpu.reset_tpu_interpret_mode_state()


# ---------------------------------------------------------------------------------------
# The sweep.


def _recording(states):
    """A ``RaceDetectionState`` that appends every instance (one per launch) to ``states``."""

    class Recording(_RACE_STATE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            states.append(self)

    return Recording


def _run(monkeypatch, capfd, case, *, checked):
    """``case()`` as NumPy leaves, the race states of its launches and what it printed,
    under the checked interpreter or the plain one."""
    if checked:
        monkeypatch.setenv(CHECKED, "checked")
    else:
        monkeypatch.delenv(CHECKED, raising=False)
    states = []
    monkeypatch.setattr(interpret_pallas_call, "RaceDetectionState", _recording(states))
    capfd.readouterr()
    # A fresh function, so that each run is traced again and reads the variable; the
    # wrappers' own jits keep their static ``interpret`` key inside it.
    result = jax.tree.map(np.asarray, jax.jit(lambda: case(), compiler_options=_FAST_COMPILE)())
    return result, states, capfd.readouterr().out


def _leaves(reference, result):
    """The leaves of two results of one case, their structures, dtypes and shapes equal."""
    reference_leaves, reference_tree = jax.tree.flatten(reference)
    leaves, tree = jax.tree.flatten(result)
    assert tree == reference_tree
    for i, (r, x) in enumerate(zip(reference_leaves, leaves, strict=True)):
        assert (x.dtype, x.shape) == (r.dtype, r.shape), f"leaf {i}"
    return list(enumerate(zip(reference_leaves, leaves, strict=True)))


def _assert_bit_identical(reference, result, what):
    for i, (r, x) in _leaves(reference, result):
        differ = bits(r) != bits(x)
        assert not differ.any(), (
            f"leaf {i} ({r.dtype}{list(r.shape)}): {int(differ.sum())} elements not "
            f"bit-identical to {what}, first at {np.argwhere(differ)[:5].tolist()}"
        )


def _assert_checked_launches(states, printed, launches):
    assert len(states) == launches, f"{len(states)} checked launches, expected {launches}"
    assert not any(s.races_found for s in states), f"race detected:\n{printed}"
    assert RACE_MESSAGE not in printed, printed


def _sweep(monkeypatch, capfd, case, launches, *, exact=True):
    """Assertions 1-3 of the module docstring for ``case`` (``launches`` kernels);
    ``exact=False``: assertion 2 for the matmul kernels (see the module docstring)."""
    plain, plain_states, _ = _run(monkeypatch, capfd, case, checked=False)
    checked, states, printed = _run(monkeypatch, capfd, case, checked=True)
    assert not plain_states, "the plain run used the TPU interpreter"
    # 1. Every launch checked, none racing.
    _assert_checked_launches(states, printed, launches)
    # 2. Bit-identical.
    if exact:
        _assert_bit_identical(plain, checked, "the plain run")
    else:
        for i, (p, c) in _leaves(plain, checked):
            p64, c64 = p.astype(np.float64), c.astype(np.float64)
            error = np.max(np.abs(c64 - p64), initial=0.0)
            scale = np.max(np.abs(p64), initial=0.0)
            assert error <= MATMUL_ROUNDING * scale, (
                f"leaf {i} ({p.dtype}{list(p.shape)}): differs from the plain run by "
                f"{error:.3g}, {error / scale:.3g} of its largest magnitude"
            )
    # 3. Finite where the plain run is; no NaN in the plain run.
    for i, (p, c) in _leaves(plain, checked):
        if not jnp.issubdtype(p.dtype, jnp.floating):
            continue
        p32, c32 = p.astype(np.float32), c.astype(np.float32)
        assert not np.isnan(p32).any(), f"leaf {i}: NaN in the plain run"
        assert np.all(np.isfinite(c32) | ~np.isfinite(p32)), f"leaf {i}: not finite"


# ---------------------------------------------------------------------------------------
# The kernel paths. Each builder draws its inputs once and returns the zero-argument
# function that runs the path.


def _normal(rng, shape, dtype=np.float32, scale=1.0):
    return jnp.asarray((rng.standard_normal(shape) * scale).astype(np.float32)).astype(dtype)


def _softmax_single():
    """Single pass forward and backward (``jax.vjp`` of the public wrapper): bf16 logits,
    16-row blocks with a partial one, 300 of 384 lanes, per-row temperatures."""
    rng = np.random.default_rng(1)
    x = _normal(rng, (13, 300), jnp.bfloat16, 3.0)
    t = jnp.asarray(np.linspace(0.25, 4.0, 13, dtype=np.float32))
    g = _normal(rng, (13, 300))

    def case():
        p, vjp = jax.vjp(lambda x: temperature_softmax(x, t), x)
        return p, vjp(g)[0]

    return case


@functools.partial(jax.jit, static_argnames="interpret")
def _softmax_two_pass(x, t, g, *, interpret):
    p = softmax_kernel.two_pass(x, t, interpret=interpret, block_v=256)
    return p, softmax_kernel.grad_two_pass(p, g, t, interpret=interpret, block_v=256)


def _softmax_two():
    """Two pass forward (statistics, normalise) and backward (sums, write) through the
    launchers with 256-column vocabulary blocks (the wrapper takes this path only past
    32768 columns): float32, 3 vocabulary blocks with a partial last, 8-row blocks."""
    rng = np.random.default_rng(2)
    x = _normal(rng, (13, 600), scale=3.0)
    t = jnp.asarray(np.linspace(0.25, 4.0, 13, dtype=np.float32))[:, None]
    g = _normal(rng, (13, 600))
    return lambda: _softmax_two_pass(x, t, g, interpret=pallas_interpret())


def _sampling_parameters(batch, vocab):
    """Per-row parameters: top-k, top-p and min-p on and off, and greedy rows (the last
    four, so that the last row block, 8 or 16 rows, is greedy only and skips sampling)."""
    pattern = [
        (1.0, 0, 1.0, 0.0),
        (0.7, 5, 1.0, 0.0),
        (1.3, 0, 0.8, 0.0),
        (1.0, 3, 0.5, 0.1),
        (2.0, vocab, 1.0, 0.0),
        (1.0, 1, 1.0, 0.0),
        (0.5, 7, 0.9, 0.05),
        (1.0, 0, 0.3, 0.2),
    ]
    rows = [pattern[b % 8] if b < batch - 4 else (0.0, 4, 1.0, 0.0) for b in range(batch)]
    temperature, top_k, top_p, min_p = (np.array(c) for c in zip(*rows, strict=True))
    return dict(
        temperature=temperature.astype(np.float32),
        top_k=top_k.astype(np.int32),
        top_p=top_p.astype(np.float32),
        min_p=min_p.astype(np.float32),
        seed=np.arange(batch, dtype=np.int32) * 7919,
        step=np.full(batch, 3, np.int32),
    )


def _sampling(debug, dtype, batch):
    """The arbitrary-k path (``max_k=None``) over ``V = 300``: row statistics, the
    whole-row kernel, with ``debug`` also the integer-weights kernel and the top-k search
    on greedy rows."""
    rng = np.random.default_rng(4)
    x = _normal(rng, (batch, 300), dtype, 3.0)
    params = _sampling_parameters(batch, 300)
    return lambda: sample(x, **params, max_k=None, debug=debug)


def _sampling_bounded():
    """The bounded-k path, ``max_k = 16`` (row statistics, the top-k kernel with per-row
    ``k``, the survivors kernel; ``debug`` only changes the wrapper there) over tie-dense
    float32 rows of 1200 columns. Row 0 holds its top-16 mostly in one lane, so the top-k
    kernel runs extra passes on its block (depth 12 after a first pass of 4)."""
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, (11, 1200)).astype(np.float32)
    x[0, ::128] = 5.0
    params = _sampling_parameters(11, 1200)
    return lambda: sample(jnp.asarray(x), **params, max_k=16, debug=True)


def _weights_wide():
    """``integer_weights`` over bf16 rows of 8300 columns: the statistics kernel carries
    its scratch across two vocabulary blocks (8192 columns each, the last partial), and
    the weights kernel writes both."""
    rng = np.random.default_rng(5)
    x = _normal(rng, (3, 8300), jnp.bfloat16, 3.0)
    t = np.array([1.0, 0.0, 0.6], np.float32)
    return lambda: integer_weights(x, t)


def _simple_gla(varlen):
    """Forward (saving its states) and backward through ``jax.vjp`` of the public
    wrapper, with ``g``, ``g_gamma``, an initial state and the final state (and their
    cotangents), chunk 64. Batched: bf16, ``B = 2``, ``T = 100`` (a partial chunk),
    ``H = 2``, ``K = 32``, ``V = 48``. Varlen: float32, ``T = 150``, ``cu_seqlens = [0,
    40, 40, 150]`` (a sequence boundary inside a chunk, an empty sequence), ``H = 1``,
    ``V = 300`` (three value tiles: float32 partial ``dq``, ``dk``)."""
    rng = np.random.default_rng(6)
    key_dim = 32
    if varlen:
        batch, seq_len, heads, value_dim, dtype = 1, 150, 1, 300, jnp.float32
        cu_seqlens = jnp.asarray(np.array([0, 40, 40, 150], np.int32))
        states = 3
    else:
        batch, seq_len, heads, value_dim, dtype = 2, 100, 2, 48, jnp.bfloat16
        cu_seqlens = None
        states = batch
    q = _normal(rng, (batch, seq_len, heads, key_dim), dtype)
    k = _normal(rng, (batch, seq_len, heads, key_dim), dtype)
    v = _normal(rng, (batch, seq_len, heads, value_dim), dtype)
    g = -jnp.abs(_normal(rng, (batch, seq_len, heads), scale=0.1))
    g_gamma = jnp.asarray(np.array([-0.05, -0.2], np.float32)[:heads])
    h0 = _normal(rng, (states, heads, key_dim, value_dim))
    do = _normal(rng, (batch, seq_len, heads, value_dim), dtype)
    dht = _normal(rng, (states, heads, key_dim, value_dim))

    def forward(q, k, v, g, g_gamma, h0):
        return chunk_simple_gla(
            q, k, v, g=g, g_gamma=g_gamma, initial_state=h0,
            output_final_state=True, cu_seqlens=cu_seqlens,
        )  # fmt: skip

    def case():
        result, vjp = jax.vjp(forward, q, k, v, g, g_gamma, h0)
        return result, vjp((do, dht))

    return case


# id: (launches, case builder, bit-identical to the plain run).
PATHS = {
    "tpu-temperature-softmax-single-pass-fwd-bwd": (2, _softmax_single, True),
    "tpu-temperature-softmax-two-pass-fwd-bwd": (4, _softmax_two, True),
    "tpu-sampling-arbitrary-k": (2, lambda: _sampling(False, np.float32, 11), True),
    "tpu-sampling-arbitrary-k-debug": (3, lambda: _sampling(True, np.float16, 20), True),
    "tpu-sampling-bounded-k-debug-topk-multi-pass": (3, _sampling_bounded, True),
    "tpu-sampling-integer-weights-two-vocab-blocks": (2, _weights_wide, True),
    "tpu-simple-gla-batched-fwd-bwd": (2, lambda: _simple_gla(False), False),
    "tpu-simple-gla-varlen-fwd-bwd": (2, lambda: _simple_gla(True), False),
}


@pytest.mark.parametrize("path", list(PATHS), ids=list(PATHS))
def test_tpu_checked_interpreter_agrees_with_plain(monkeypatch, capfd, path):
    """No race, the same bits, finite where the plain run is (module docstring)."""
    launches, build, exact = PATHS[path]
    _sweep(monkeypatch, capfd, build(), launches, exact=exact)


# ---------------------------------------------------------------------------------------
# Planted bugs: the sweep fails on each.


def _uninitialised_scratch_kernel(x_ref, o_ref, scratch_ref):
    o_ref[...] = x_ref[...] + scratch_ref[...]  # the scratch is never written


def _uninitialised_scratch(dtype):
    x = jnp.ones((8, 128), dtype)

    def case():
        return pl.pallas_call(
            _uninitialised_scratch_kernel,
            out_shape=jax.ShapeDtypeStruct(x.shape, dtype),
            scratch_shapes=[pltpu.VMEM(x.shape, dtype)],
            interpret=pallas_interpret(),
        )(x)

    return case


def test_tpu_planted_uninitialised_integer_scratch_fails(monkeypatch, capfd):
    """An int32 scratch read before any write: the smallest int32 in the plain run, the
    largest in the checked one, so the bits differ (assertion 2)."""
    with pytest.raises(AssertionError, match="not bit-identical"):
        _sweep(monkeypatch, capfd, _uninitialised_scratch(jnp.int32), 1)


def test_tpu_planted_uninitialised_float_scratch_fails(monkeypatch, capfd):
    """A float32 scratch read before any write: NaN in both interpreters (the bits
    agree), caught by the no-NaN check (assertion 3)."""
    with pytest.raises(AssertionError, match="NaN in the plain run"):
        _sweep(monkeypatch, capfd, _uninitialised_scratch(jnp.float32), 1)


def _dma_race_kernel(x_hbm, o_ref, buffer, semaphore):
    copy = pltpu.make_async_copy(x_hbm, buffer, semaphore)
    copy.start()
    o_ref[...] = buffer[...]  # read while the copy may still be writing: a race
    copy.wait()


def _dma_race():
    x = jnp.ones((8, 128), jnp.float32)

    def case():
        return pl.pallas_call(
            _dma_race_kernel,
            out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
            scratch_shapes=[pltpu.VMEM(x.shape, x.dtype), pltpu.SemaphoreType.DMA(())],
            interpret=pallas_interpret(),
        )(x)

    return case


def test_tpu_planted_dma_race_fails(monkeypatch, capfd):
    """Reading a DMA's destination between its start and its wait: the race detector
    flags it (assertion 1)."""
    with pytest.raises(AssertionError, match="race detected"):
        _sweep(monkeypatch, capfd, _dma_race(), 1)
