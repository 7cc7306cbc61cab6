"""Registered cases of temperature softmax: the random grid and the numerically hard rows.

Tolerance (rule 1, both backends), for a row of ``V`` entries::

    ε <= (ln V + 3) * 2**-24 + 2**-22

Per element, with ``y = (x - max) / T`` in natural units, a float32 kernel rounds the
exponent (``|y| * 2**-23`` relative after exp: the scale ``log2(e) / T`` and the product
each round once) and then ``exp``, the sum and the normalisation (about ``3 * 2**-24``).
ε weights each element's relative error by ``p**2``; the ``p**2``-weighted root mean
square of ``|y|`` over a row is at most ``ln(V) / 2`` (the worst row has one maximum and
``V - 1`` entries at ``y = ln(V) / 2``). The last term leaves room for the native GPU's
``ex2.approx`` (2 ulp). Measured in interpret mode: ε_GPU <= 1.5e-7 on every case, ε_TPU at
the float32 floor (the double-float kernel rounds once).
"""

from __future__ import annotations

import math

import numpy as np

from tops.precision.metrics import numpy_dtype
from tops.precision.registry import Arrays, Case, Op, case_seed

OP_NAME = "temperature_softmax"

OUTPUT = "probs"
DTYPES = ("float32", "bfloat16", "float16")
# A per-row mixture covering greedy, tiny, ordinary and large temperatures, ordered so
# that every batch of two or more mixes a greedy row with a sampled one.
MIXED_TEMPERATURES = (0.0, 0.7, 1e-4, 1.5, 0.05, 10.0, 100.0, 1.0)


def _reference(inputs: Arrays) -> Arrays:
    from tops import cpu

    return {OUTPUT: cpu.temperature_softmax(inputs["logits"], inputs["temperature"])}


def _run_tpu(inputs: Arrays) -> Arrays:
    from tops import ops
    from tops.precision.convert import from_jax, to_jax

    out = ops.temperature_softmax(to_jax(inputs["logits"]), to_jax(inputs["temperature"]))
    return {OUTPUT: from_jax(out)}


def _run_gpu(inputs: Arrays) -> Arrays:
    from tops import backends, gpu
    from tops.precision.convert import from_torch, to_torch

    device = backends.torch_device()
    out = gpu.temperature_softmax(
        to_torch(inputs["logits"], device), to_torch(inputs["temperature"], device)
    )
    return {OUTPUT: from_torch(out)}


def tolerance(vocab: int) -> dict[str, float]:
    """The rule-1 bound on ε for rows of ``vocab`` entries (module docstring)."""
    return {OUTPUT: (math.log(max(vocab, 1)) + 3.0) * 2.0**-24 + 2.0**-22}


def _inputs(logits: np.ndarray, temperature, dtype: str) -> Arrays:
    """Round the logits to ``dtype`` and the temperature to float32, once, for everyone."""
    return {
        "logits": np.asarray(logits, np.float64).astype(numpy_dtype(dtype)),
        "temperature": np.asarray(temperature, np.float32),
    }


def _random(dtype: str, batch: int, vocab: int, temperature: str):
    name = f"{dtype}_B{batch}_V{vocab}_T{temperature}"

    def make() -> Arrays:
        rng = np.random.default_rng(case_seed(OP_NAME, name))
        logits = rng.standard_normal((batch, vocab)) * 4.0
        if temperature == "mixed":
            t = np.resize(MIXED_TEMPERATURES, batch)
        else:
            t = np.float32(temperature)
        return _inputs(logits, t, dtype)

    slow = batch * vocab > 600_000
    return Case(name, make, tolerance(vocab), slow=slow)


def _fixed(name: str, rows, temperature, dtype: str = "float32") -> Case:
    rows = np.array(rows, np.float64)
    return Case(name, lambda: _inputs(rows, temperature, dtype), tolerance(rows.shape[1]))


def parameters(inputs: Arrays) -> dict[str, str | int]:
    """What a case varies, for the report's plots: the logits' dtype and the vocabulary."""
    return {"dtype": str(inputs["logits"].dtype), "V": inputs["logits"].shape[-1]}


def _cases() -> tuple[Case, ...]:
    cases = [
        _random(dtype, batch, vocab, temperature)
        for dtype in DTYPES
        for batch, vocab in ((1, 1), (5, 1000), (3, 4097), (2, 40000))
        for temperature in ("1.0", "mixed")
    ]
    cases += [
        _random("bfloat16", 2, 151936, "0.7"),
        _random("bfloat16", 2, 201088, "mixed"),
        _random("float32", 1, 262144, "1.0"),
        _random("float32", 1024, 128, "mixed"),
        _random("bfloat16", 8, 201088, "1.0"),
        _random("float32", 0, 1000, "1.0"),
        _random("bfloat16", 2, 300000, "mixed"),
        _fixed("all_equal_V50000", [[3.0] * 50000], 0.9),
        _fixed("spread_1e6_T0.01", [[1e6, -1e6, 0.0]], 0.01),
        _fixed("close_1e4_T0.01", [[1e4, 1e4 + 1, 1e4 - 1]], 0.01),
        _fixed("magnitude_1e4_T1e-4", [[1e4, -1e4, 9999.9990234375, 0.5]], 1e-4),
        Case("near_uniform_T100", _near_uniform, tolerance(3000)),
        Case("special_rows", _special_rows, tolerance(300)),
    ]
    return tuple(cases)


def _near_uniform() -> Arrays:
    rng = np.random.default_rng(case_seed(OP_NAME, "near_uniform_T100"))
    return _inputs(rng.standard_normal((4, 3000)), 100.0, "bfloat16")


def _special_rows() -> Arrays:
    """One row per special case of the contract, next to ordinary rows."""
    inf, nan = np.inf, np.nan
    v = 300
    rng = np.random.default_rng(case_seed(OP_NAME, "special_rows"))
    rows = rng.standard_normal((12, v)) * 3
    temperature = np.ones(12)
    rows[0, 17] = nan  # NaN logit: all NaN
    rows[1] = -inf  # all -inf: zeros
    rows[2, [5, 250]] = inf  # two +inf: half each
    rows[3, [5, 250]] = inf  # ... and greedy: the first one
    temperature[3] = 0.0
    rows[4, :] = -inf  # a single finite logit
    rows[4, 299] = -2.0
    rows[5, ::2] = -inf  # half the row masked
    temperature[6] = -1.0  # negative temperature at run time: NaN
    temperature[7] = nan  # NaN temperature: NaN
    temperature[8] = inf  # infinite temperature: uniform over entries above -inf
    rows[8, :100] = -inf
    temperature[9] = 1e-45  # subnormal temperature: greedy
    rows[10, :] = 2.5  # ties everywhere, greedy: index 0
    temperature[10] = 0.0
    temperature[11] = 3.4e38  # huge but finite temperature
    return _inputs(rows, temperature, "float32")


OP = Op(
    name=OP_NAME,
    output_dtypes=lambda inputs: {OUTPUT: "float32"},
    reference=_reference,
    runners={"tpu": _run_tpu, "gpu": _run_gpu},
    cases=_cases(),
    parameters=parameters,
)
