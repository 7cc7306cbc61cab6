"""A row's token and debug arrays do not depend on the batch around it: the same rows
reordered, grown with copies and padded with other rows give identical results, on both
kernel paths of both backends."""

import numpy as np
import pytest

from tops.precision.cases.sampling import ROW_PARAMETERS

BATCH, VOCAB = 11, 700


def _inputs():
    rng = np.random.default_rng(77)
    return rng.standard_normal((BATCH, VOCAB)).astype(np.float32) * 2, {
        "temperature": rng.uniform(0.5, 1.5, BATCH).astype(np.float32),
        "top_k": rng.integers(0, 80, BATCH).astype(np.int32),
        "top_p": rng.uniform(0.6, 1.0, BATCH).astype(np.float32),
        "min_p": rng.uniform(0.0, 0.05, BATCH).astype(np.float32),
        "seed": rng.integers(0, 2**31, BATCH).astype(np.int32),
        "step": rng.integers(0, 2**31, BATCH).astype(np.int32),
    }


def _sample(backend, logits, parameters, max_k):
    """``(tokens, probs)`` as NumPy from the backend's sampler."""
    if backend == "tpu":
        import jax.numpy as jnp

        from tops import ops

        tokens, _, debug = ops.sample(
            jnp.asarray(logits),
            **{n: jnp.asarray(v) for n, v in parameters.items()},
            max_k=max_k,
            debug=True,
        )
        return np.asarray(tokens), np.asarray(debug["topk_topp_unnorm_probs_i32_unsorted"])
    import torch

    from tops import gpu

    tokens, _, debug = gpu.sample(
        torch.from_numpy(logits),
        **{n: torch.from_numpy(v) for n, v in parameters.items()},
        max_k=max_k,
        debug=True,
    )
    return tokens.numpy(), debug["topk_topp_unnorm_probs_i32_unsorted"].numpy()


@pytest.mark.parametrize("max_k", [None, 64], ids=["arbitrary", "bounded64"])
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_rows_are_independent_of_the_batch(backend, max_k):
    logits, parameters = _inputs()
    tokens, probs = _sample(backend, logits, parameters, max_k)
    rng = np.random.default_rng(78)
    rows = np.concatenate([rng.permutation(BATCH), rng.integers(0, BATCH, 6)])
    padding = rng.standard_normal((5, VOCAB)).astype(np.float32)
    grown_logits = np.concatenate([logits[rows], padding])
    grown_parameters = {
        name: np.concatenate([value[rows], value[:5]]) for name, value in parameters.items()
    }
    assert set(grown_parameters) == set(ROW_PARAMETERS)
    grown_tokens, grown_probs = _sample(backend, grown_logits, grown_parameters, max_k)
    assert np.array_equal(grown_tokens[: len(rows)], tokens[rows])
    assert np.array_equal(grown_probs[: len(rows)], probs[rows])
