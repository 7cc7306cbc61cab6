"""Random rows full of special values: both kernels must reproduce the reference's NaN,
zero and one-hot rows exactly and stay within tolerance elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from tops.precision.cases.temperature_softmax import tolerance
from tops.precision.metrics import compare, numpy_dtype
from tops.precision.registry import op

SOFTMAX = op("temperature_softmax")
SPECIAL_LOGITS = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-40, 0.0, -0.0])
SPECIAL_TEMPERATURES = np.array(
    [0.0, 1e-45, 1e-38, 1e-30, 1e-4, 1.0, 1e4, 1.8e19, 2.0**64, 3e38, np.inf, -1.0, np.nan]
)


def _fuzz_inputs(seed: int, batch: int, vocab: int, dtype: str):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, vocab)) * rng.choice([0.1, 3.0, 1e3], (batch, 1))
    density = rng.choice([0.0, 1e-3, 0.05, 0.5], (batch, 1))
    hit = rng.random((batch, vocab)) < density
    logits[hit] = rng.choice(SPECIAL_LOGITS, hit.sum())
    logits[rng.random(batch) < 0.2] = -np.inf  # some rows entirely masked
    temperature = rng.choice(SPECIAL_TEMPERATURES, batch).astype(np.float32)
    temperature[rng.random(batch) < 0.5] = rng.uniform(0.05, 5.0)
    with np.errstate(over="ignore"):
        return {
            "logits": logits.astype(numpy_dtype(dtype)),
            "temperature": temperature,
        }


# The interpreter evaluates both sides of a masked select, so numpy sees the overflow
# of x - m on rows spanning more than FLT_MAX; the select discards those lanes.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize(
    ("batch", "vocab", "dtype"),
    [(16, 300, "float32"), (16, 300, "bfloat16"), (5, 40000, "float32")],
    ids=["f32_V300", "bf16_V300", "f32_V40000_multipass"],
)
def test_special_values_match_the_reference(backend, batch, vocab, dtype):
    for seed in range(6):
        inputs = _fuzz_inputs(seed, batch, vocab, dtype)
        ref = SOFTMAX.reference(inputs)["probs"]
        got = SOFTMAX.runners[backend](inputs)["probs"]
        c = compare(got, ref, "float32")
        assert (c.special, c.nonfinite) == (0, 0), (seed, c)
        assert c.rel_l2 <= tolerance(vocab)["probs"], (seed, c)
