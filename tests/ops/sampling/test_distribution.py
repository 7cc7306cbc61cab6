"""20000 draws of the TPU sampler over distinct seeds match the float64 distribution
renormalised over the kept entries, on both paths (Pearson's chi-square, df = kept - 1,
below the 1 - 1e-6 quantile: a correct sampler fails once in a million runs). The GPU
sampler is bit-identical to the reference and to this path on every tested row
(``test_gpu_kernels.py``), and the reference passes the same test
(``tests/cpu/test_sampling_ref.py``); 20000 Triton programs would take minutes in the
interpreter. The arbitrary-k path's run is marked slow (16 s); it equals the reference on
every row of the kernel tests."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tops import ops
from tops.cpu import sampling

DRAWS = 20_000
FALSE_ALARM = 1e-6
LOGITS = np.array([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, 1.5, 0.25]], np.float32)


@pytest.mark.parametrize(
    ("max_k", "temperature", "top_k", "top_p", "min_p"),
    [
        pytest.param(None, 1.0, 0, 1.0, 0.0, marks=pytest.mark.slow),
        (8, 0.7, 6, 0.9, 0.02),
    ],
    ids=["arbitrary-plain", "bounded8-filtered"],
)
def test_tpu_chi_square_of_20000_draws(max_k, temperature, top_k, top_p, min_p):
    rows = jnp.asarray(np.repeat(LOGITS, DRAWS, axis=0))
    tokens, valid, debug = ops.sample(
        rows,
        temperature=temperature,
        seed=jnp.arange(DRAWS, dtype=jnp.uint32),
        step=5,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        max_k=max_k,
        debug=True,
    )
    assert bool(valid.all())
    support = np.asarray(debug["topk_topp_unnorm_probs_i32_unsorted"][0]) > 0
    expected = sampling.float64_probabilities(LOGITS, np.float32(temperature), support[None])[0]
    counts = np.bincount(np.asarray(tokens), minlength=LOGITS.shape[1])
    assert not counts[~support].any()
    statistic = np.sum(
        (counts[support] - DRAWS * expected[support]) ** 2 / (DRAWS * expected[support])
    )
    assert statistic < stats.chi2.ppf(1 - FALSE_ALARM, df=support.sum() - 1)
