"""Registered cases of exact top-k: random rows, tie-dense rows and the inputs on which
the TPU kernel's early stopping cannot happen.

Both outputs are discrete (``EXACT``: values are input elements, indices integers), so
the tolerance is 0: every backend must equal the reference element for element, bit for
bit. ε is the fraction of mismatching elements.
"""

from __future__ import annotations

import numpy as np

from tops.precision.metrics import EXACT, numpy_dtype
from tops.precision.registry import Arrays, Case, Op, case_seed

OP_NAME = "topk"

OUTPUTS = ("values", "indices")
EXACT_TOLERANCE = dict.fromkeys(OUTPUTS, 0.0)
SLOW_ELEMENTS = 600_000


def _arguments(inputs: Arrays) -> tuple[object, dict]:
    """``k`` and the keyword arguments of the call, from the case inputs."""
    if "max_k" in inputs:
        return inputs["k"], {"max_k": int(inputs["max_k"])}
    return int(inputs["k"]), {}


def _reference(inputs: Arrays) -> Arrays:
    from tops import cpu

    k, kwargs = _arguments(inputs)
    values, indices = cpu.topk(inputs["x"], k, **kwargs)
    return {"values": values, "indices": indices}


def _run_tpu(inputs: Arrays) -> Arrays:
    from tops import ops
    from tops.precision.convert import from_jax, to_jax

    k, kwargs = _arguments(inputs)
    if "max_k" in kwargs:
        k = to_jax(k)
    values, indices = ops.topk(to_jax(inputs["x"]), k, **kwargs)
    return {"values": from_jax(values), "indices": from_jax(indices)}


def _run_gpu(inputs: Arrays) -> Arrays:
    from tops import backends, gpu
    from tops.precision.convert import from_torch, to_torch

    device = backends.torch_device()
    k, kwargs = _arguments(inputs)
    if "max_k" in kwargs:
        k = to_torch(k, device)
    values, indices = gpu.topk(to_torch(inputs["x"], device), k, **kwargs)
    return {"values": from_torch(values), "indices": from_torch(indices)}


def _case(name: str, make_x, k, *, max_k: int | None = None, slow: bool = False) -> Case:
    """A case whose ``x`` comes from ``make_x(rng)`` (already in its dtype; ``rng`` seeded
    by the case's name); ``k`` an int, or a per-row list with ``max_k``."""

    def make() -> Arrays:
        inputs = {"x": make_x(np.random.default_rng(case_seed(OP_NAME, name)))}
        if max_k is None:
            inputs["k"] = np.asarray(k, np.int64)
        else:
            inputs["k"] = np.asarray(k, np.int32)
            inputs["max_k"] = np.asarray(max_k, np.int64)
        return inputs

    return Case(name, make, EXACT_TOLERANCE, slow=slow)


def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(values, np.float64).astype(numpy_dtype(dtype))


def _random(dtype: str, batch: int, vocab: int, k: int, *, slow: bool = False):
    """Normal rows; ``slow`` where the interpreters take minutes (B = 4096 launches 4096
    Triton programs, each a Python call in the interpreter) or past SLOW_ELEMENTS."""

    def make_x(rng: np.random.Generator) -> np.ndarray:
        return _rounded(rng.standard_normal((batch, vocab)) * 4.0, dtype)

    slow = slow or batch * vocab > SLOW_ELEMENTS
    return _case(f"{dtype}_B{batch}_V{vocab}_k{k}", make_x, k, slow=slow)


def _one_every_128(vocab: int) -> np.ndarray:
    row = np.zeros(vocab)
    row[::128] = 1.0
    return row


def _large_in_last_128(vocab: int) -> np.ndarray:
    row = np.zeros(vocab)
    row[vocab - 37] = 1e30
    return row


# Rows of ``vocab`` values on which the TPU kernel's early stopping cannot happen.
ADVERSARIAL = {
    "all_equal": lambda vocab: np.full(vocab, 0.5),
    "one_every_128": _one_every_128,
    "ascending": lambda vocab: np.arange(vocab, dtype=np.float64),
    "descending": lambda vocab: -np.arange(vocab, dtype=np.float64),
    "large_in_last_128": _large_in_last_128,
}


def _adversarial_case(dtype: str, vocab: int, k: int) -> Case:
    def make_x(rng: np.random.Generator) -> np.ndarray:  # deterministic rows: no draw
        rows = [make_row(vocab) for make_row in ADVERSARIAL.values()]
        return _rounded(np.stack(rows), dtype)

    return _case(f"adversarial_{dtype}_V{vocab}_k{k}", make_x, k)


def _tie_dense(dtype: str, batch: int, vocab: int, k: int) -> Case:
    """Integers in [-20, 20): every value repeats thousands of times."""

    def make_x(rng: np.random.Generator) -> np.ndarray:
        return _rounded(rng.integers(-20, 20, (batch, vocab)), dtype)

    return _case(f"ties_{dtype}_B{batch}_V{vocab}_k{k}", make_x, k)


def _special_rows(rng: np.random.Generator) -> np.ndarray:
    """NaN, -inf, signed zeros and +inf mixed into rows of 1000 (fewer than k non-NaN
    values in the last row, so its NaNs fill the tail)."""
    rows = rng.standard_normal((5, 1000))
    rows[0, ::7] = np.nan
    rows[1, ::3] = -np.inf
    rows[1, 1::3] = np.inf
    rows[2, :] = 0.0
    rows[2, ::2] = -0.0
    rows[3, :] = -np.inf
    rows[3, 500] = np.nan
    rows[4, :] = np.nan
    rows[4, [3, 999, 500]] = [-np.inf, 2.0, -0.0]
    return _rounded(rows, "float32")


def _cases() -> tuple[Case, ...]:
    cases = [
        _random(dtype, 3, vocab, k)
        for dtype in ("float32", "bfloat16")
        for vocab, ks in (
            (1, (1,)),
            (127, (1, 8, 64, 127)),
            (128, (1, 128)),
            (1000, (8, 256, 1000)),
            (50257, (1, 64, 256, 1000)),
        )
        for k in ks
    ]
    cases += [
        _random("float16", 3, 50257, 64),
        _random("float32", 300, 128, 8),
        _random("bfloat16", 2, 128256, 64),
        _random("bfloat16", 2, 151936, 128),
        _random("bfloat16", 2, 201088, 256),
        _random("float32", 2, 262144, 50),
        _random("float32", 2, 50257, 50257),
        _random("bfloat16", 8, 201088, 64),
        _random("float32", 0, 1000, 8),
        _random("float32", 4096, 128, 8, slow=True),
        _tie_dense("bfloat16", 3, 201088, 256),
        _tie_dense("bfloat16", 4, 50257, 1000),
        _case("special_rows_k8", _special_rows, 8),
        _case("special_rows_k999", _special_rows, 999),
        _case(
            "per_row_float32_V1000",
            lambda rng: _rounded(rng.standard_normal((6, 1000)), "float32"),
            [1, 0, 5, 64, -3, 100],
            max_k=64,
        ),
        _case(
            "per_row_bfloat16_V50257",
            lambda rng: _rounded(rng.standard_normal((3, 50257)), "bfloat16"),
            [256, 17, 300],
            max_k=256,
        ),
    ]
    for dtype in ("float32", "bfloat16"):
        for vocab, k in ((1000, 64), (50257, 256), (4096, 1000)):
            cases.append(_adversarial_case(dtype, vocab, k))
    return tuple(cases)


def _output_dtypes(inputs: Arrays) -> dict[str, str]:
    return dict.fromkeys(OUTPUTS, EXACT)


OP = Op(
    name=OP_NAME,
    output_dtypes=_output_dtypes,
    reference=_reference,
    runners={"tpu": _run_tpu, "gpu": _run_gpu},
    cases=_cases(),
    parameters=lambda inputs: {"dtype": str(inputs["x"].dtype), "V": inputs["x"].shape[-1]},
)
