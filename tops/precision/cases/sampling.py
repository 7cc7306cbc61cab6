"""Registered cases of top-k / top-p / min-p sampling, on both kernel paths.

Every output but one is discrete (``EXACT``, tolerance 0): the tokens, the validity
mask and the debug arrays must equal the reference bit for bit, so ε is the fraction of
mismatching elements (the token match rate is ``1 - ε`` of ``next_tokens``).

``probabilities`` measures the quantisation itself: the integer weights normalised in
float64 (``q / S'``) against the float64 distribution ``exp((x - m) / T)`` normalised
over the same kept entries (``tops.cpu.sampling.float64_probabilities``). Its tolerance,
``2**-16``, is the worst case of the quantisation's error budget (tested element by
element in ``tests/cpu/test_sampling_ref.py``): the exponent ``w = (m - x) * s`` carries
three float32 roundings (the difference, the Newton reciprocal within 2 ulp, and the
product), a relative error of at most ``5 * 2**-24`` of ``w`` that moves ``2**-w`` by
``ln 2 * w * 5 * 2**-24``, at most ``6.6e-6`` for the largest kept ``w`` (31); the
Taylor polynomial and its Horner evaluation add about ``4 * 2**-24`` and the floor at
most 1 in ``2**30`` of the maximum per entry (``sqrt(V) * 2**-30 <= 2**-21`` in the
norm). A relative error bounded per entry bounds the relative L2 error of the
normalised vector by twice the bound (the normalisation's error is a weighted mean of
the same errors): ``2 * (6.6e-6 + 2.4e-7 + 4.8e-7) = 1.47e-5 < 2**-16``; entries past
``w = 31`` hold under ``V * 2**-31`` of the mass. In practice the mass sits at small
``w``: measured ε is below 5e-8 on every case.
"""

from __future__ import annotations

import numpy as np

from tops.precision.metrics import EXACT, numpy_dtype
from tops.precision.registry import Arrays, Case, Op, case_seed

OP_NAME = "sampling"

EXACT_OUTPUTS = (
    "next_tokens",
    "valid",
    "greedy_sampled",
    "topk_logits_unsorted",
    "topk_topp_unnorm_probs_i32_unsorted",
    "random_unnorm_cdf_sampled_hi",
    "random_unnorm_cdf_sampled_lo",
)
PROBABILITY_TOLERANCE = 2.0**-16
ROW_PARAMETERS = ("temperature", "top_k", "top_p", "min_p", "seed", "step")


def _outputs(tokens, valid, debug) -> Arrays:
    """The flat output arrays of one call (NumPy), from ``(tokens, valid, debug)``."""
    hi, lo = debug["random_unnorm_cdf_sampled"]
    probs = np.asarray(debug["topk_topp_unnorm_probs_i32_unsorted"]).astype(np.int64)
    total = probs.sum(axis=-1, keepdims=True)
    return {
        "next_tokens": np.asarray(tokens),
        "valid": np.asarray(valid),
        "greedy_sampled": np.asarray(debug["greedy_sampled"]),
        "topk_logits_unsorted": np.asarray(debug["topk_logits_unsorted"]),
        "topk_topp_unnorm_probs_i32_unsorted": probs,
        "random_unnorm_cdf_sampled_hi": np.asarray(hi),
        "random_unnorm_cdf_sampled_lo": np.asarray(lo),
        "probabilities": probs / np.where(total > 0, total, 1),
    }


def _max_k(inputs: Arrays) -> int | None:
    return int(inputs["max_k"]) if "max_k" in inputs else None


def _reference(inputs: Arrays) -> Arrays:
    from tops.cpu import sampling

    logits = inputs["logits"]
    result = sampling.intermediates(
        logits, **{name: inputs[name] for name in ROW_PARAMETERS}, max_k=_max_k(inputs)
    )
    drawn = result["drawn"]
    debug = {
        "greedy_sampled": result["greedy_sampled"],
        "topk_logits_unsorted": result["topk_logits_unsorted"],
        "topk_topp_unnorm_probs_i32_unsorted": result["probs"],
        "random_unnorm_cdf_sampled": (
            (drawn >> 32).astype(np.uint32),
            (drawn & 0xFFFFFFFF).astype(np.uint32),
        ),
    }
    outputs = _outputs(result["next_tokens"], result["valid"], debug)
    outputs["probabilities"] = sampling.float64_probabilities(
        logits, inputs["temperature"], result["support"]
    )
    return outputs


def _run_tpu(inputs: Arrays) -> Arrays:
    from tops import ops
    from tops.precision.convert import from_jax, to_jax

    parameters = {name: to_jax(inputs[name]) for name in ROW_PARAMETERS}
    tokens, valid, debug = ops.sample(
        to_jax(inputs["logits"]), **parameters, max_k=_max_k(inputs), debug=True
    )
    hi, lo = debug["random_unnorm_cdf_sampled"]
    debug = {
        **{
            name: from_jax(value)
            for name, value in debug.items()
            if name != "random_unnorm_cdf_sampled"
        }
    }
    debug["random_unnorm_cdf_sampled"] = (from_jax(hi), from_jax(lo))
    return _outputs(from_jax(tokens), from_jax(valid), debug)


def _run_gpu(inputs: Arrays) -> Arrays:
    from tops import backends, gpu
    from tops.precision.convert import from_torch, to_torch

    device = backends.torch_device()
    # torch has few uint32 kernels: seeds and steps travel as int64 (taken mod 2**32).
    parameters = {
        name: to_torch(
            inputs[name].astype(np.int64) if inputs[name].dtype == np.uint32 else inputs[name],
            device,
        )
        for name in ROW_PARAMETERS
    }
    tokens, valid, debug = gpu.sample(
        to_torch(inputs["logits"], device), **parameters, max_k=_max_k(inputs), debug=True
    )
    hi, lo = debug["random_unnorm_cdf_sampled"]
    debug = {
        name: from_torch(value)
        for name, value in debug.items()
        if name != "random_unnorm_cdf_sampled"
    }
    debug["random_unnorm_cdf_sampled"] = (_uint32(hi), _uint32(lo))
    return _outputs(from_torch(tokens), from_torch(valid), debug)


def _uint32(tensor) -> np.ndarray:
    import torch

    return tensor.detach().cpu().to(torch.int64).numpy().astype(np.uint32)


def _rows(batch: int, rng: np.random.Generator, **fixed) -> dict[str, np.ndarray]:
    """Per-row parameters: ``fixed`` values (scalars or per-row lists) where given, and
    a mix otherwise."""
    mix = {
        "temperature": rng.choice(
            np.array([0.0, 0.7, 1.0, 1.3, 1e-4, 1e4], np.float32),
            batch,
            p=[0.1, 0.3, 0.2, 0.2, 0.1, 0.1],
        ),
        "top_k": rng.choice(
            np.array([0, 1, 5, 50, -1], np.int32), batch, p=[0.3, 0.1, 0.2, 0.3, 0.1]
        ),
        "top_p": rng.choice(
            np.array([1.0, 0.95, 0.5, 1e-6], np.float32), batch, p=[0.4, 0.3, 0.2, 0.1]
        ),
        "min_p": rng.choice(np.array([0.0, 0.05, 1.0], np.float32), batch, p=[0.6, 0.3, 0.1]),
        "seed": rng.integers(0, 2**32, batch, dtype=np.uint32),
        "step": rng.integers(0, 2**31, batch).astype(np.int32),
    }
    dtypes = {
        "temperature": np.float32,
        "top_p": np.float32,
        "min_p": np.float32,
        "top_k": np.int32,
        "seed": np.uint32,
        "step": np.int32,
    }
    for name, value in fixed.items():
        mix[name] = np.broadcast_to(np.asarray(value, dtypes[name]), (batch,)).copy()
    return mix


def _case(name: str, make_logits, *, max_k: int | None = None, slow: bool = False, **fixed) -> Case:
    """The case ``{name}_arbitrary`` (or ``_bounded{max_k}``): logits from
    ``make_logits(rng)``, then the rows' parameters, from one generator seeded by ``name``,
    so that both paths of one ``name`` see the same inputs."""

    def make() -> Arrays:
        rng = np.random.default_rng(case_seed(OP_NAME, name))
        logits = make_logits(rng)
        inputs = {"logits": logits, **_rows(logits.shape[0], rng, **fixed)}
        if max_k is not None:
            inputs["max_k"] = np.asarray(max_k, np.int64)
        return inputs

    tolerance = {**dict.fromkeys(EXACT_OUTPUTS, 0.0), "probabilities": PROBABILITY_TOLERANCE}
    path = "arbitrary" if max_k is None else f"bounded{max_k}"
    return Case(f"{name}_{path}", make, tolerance, slow=slow)


def _normal(dtype: str, batch: int, vocab: int, spread: float = 3.0):
    def make(rng: np.random.Generator) -> np.ndarray:
        return (rng.standard_normal((batch, vocab)) * spread).astype(numpy_dtype(dtype))

    return make


def _special_rows(rng: np.random.Generator) -> np.ndarray:
    """A NaN row, an all -inf row, +inf logits, all-equal, signed zeros, one finite
    value among -inf, and an ordinary row between them."""
    rows = rng.standard_normal((8, 300)).astype(np.float32)
    rows[0, 17] = np.nan
    rows[1, :] = -np.inf
    rows[2, [5, 200]] = np.inf
    rows[3, :] = 0.25
    rows[4, :] = 0.0
    rows[4, ::2] = -0.0
    rows[5, :] = -np.inf
    rows[5, 123] = -3.0
    rows[7, :] = np.nan
    return rows


def _cases() -> tuple[Case, ...]:
    cases = []
    for max_k in (None, 64):
        cases += [
            _case("mix_float32_B13_V1000", _normal("float32", 13, 1000), max_k=max_k),
            _case("mix_bfloat16_B9_V50257", _normal("bfloat16", 9, 50257), max_k=max_k),
            _case("mix_float16_B5_V127", _normal("float16", 5, 127), max_k=max_k),
            _case(
                "serving_bfloat16_B4_V128256",
                _normal("bfloat16", 4, 128256, spread=2.0),
                max_k=max_k,
                temperature=0.8,
                top_k=50,
                top_p=0.95,
                min_p=0.0,
            ),
            _case(
                "special_rows_float32_V300",
                _special_rows,
                max_k=max_k,
                temperature=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0],
            ),
            _case("empty_batch_float32_V1000", _normal("float32", 0, 1000), max_k=max_k),
            _case(
                "extreme_temperatures_float32_B6_V1000",
                _normal("float32", 6, 1000, spread=10.0),
                max_k=max_k,
                temperature=[1e-4, 1e4, np.inf, 2.0**-126, 2.0**-127, 1.0],
                top_k=0,
                top_p=1.0,
                min_p=0.0,
            ),
        ]
    cases += [
        _case("vocab1_float32_B3_V1", _normal("float32", 3, 1), max_k=1),
        _case("vocab1_float32_B3_V1", _normal("float32", 3, 1)),
        _case(
            "full_vocab_float32_B2_V262144",
            _normal("float32", 2, 262144),
            top_k=0,
            top_p=0.9,
        ),
        _case(
            "full_vocab_bfloat16_B2_V262144",
            _normal("bfloat16", 2, 262144),
            max_k=256,
            top_k=256,
        ),
    ]
    return tuple(cases)


def _output_dtypes(inputs: Arrays) -> dict[str, str]:
    return {**dict.fromkeys(EXACT_OUTPUTS, EXACT), "probabilities": "float32"}


OP = Op(
    name=OP_NAME,
    output_dtypes=_output_dtypes,
    reference=_reference,
    runners={"tpu": _run_tpu, "gpu": _run_gpu},
    cases=_cases(),
    parameters=lambda inputs: {
        "dtype": str(inputs["logits"].dtype),
        "V": inputs["logits"].shape[-1],
    },
)
