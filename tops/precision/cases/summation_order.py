"""The summation-order model of a state summed chunk by chunk from exact products: one
random draw of the order a kernel may use, for rule 2's derived margins
(``tops.precision.margins``).

Simple GLA without gates carries a float32 state ``S = S_0 + sum_t a_t^T b_t`` (the final
state: ``a = k, b = v``; the initial-state gradient: ``a = scale q, b = do`` in reverse).
With bf16 inputs every product is exact in float32 (8 x 8 significand bits), so the
kernels differ only in the order in which a chunk's matmul sums its products before the
chunk's sum joins the carried state. One draw sums each chunk's exact products in
float32 over a uniformly random permutation (one ``rng.permutation`` per chunk, shared by
every element, as one matmul shares its order) along a tree of a random shape, one of
:data:`SHAPES`: ``sequential`` (a dot-product loop: what the interpreters do),
``pairwise`` (a balanced reduction tree) or ``random tree`` (split points uniform: the
blocked and partially-accumulated orders of BLAS kernels, MXUs and tensor cores lie
between the two), then adds that float32 sum to the float32 state, walking the chunks in
the kernels' order. Sequences (``cu_seqlens``) are cut into
chunks from their own start.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

SHAPES = ("sequential", "pairwise", "random tree")


def _tree_sum(terms: list[np.ndarray], shape: str, rng: np.random.Generator) -> np.ndarray:
    """The float32 sum of ``terms`` (in their order) along a binary tree of ``shape``."""
    if len(terms) == 1:
        return terms[0]
    if shape == "sequential":
        split = len(terms) - 1
    elif shape == "pairwise":
        split = len(terms) // 2
    else:
        split = int(rng.integers(1, len(terms)))
    return _tree_sum(terms[:split], shape, rng) + _tree_sum(terms[split:], shape, rng)


def _sequence_state(
    left: np.ndarray,
    right: np.ndarray,
    state: np.ndarray,
    *,
    chunk_size: int,
    reverse: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """One draw for the rows ``left [n, L, H, K]``, ``right [n, L, H, V]`` from the float32
    ``state [n, H, K, V]``."""
    length = left.shape[1]
    chunks = range(math.ceil(length / chunk_size))
    for chunk in reversed(chunks) if reverse else chunks:
        tokens = rng.permutation(
            np.arange(chunk * chunk_size, min((chunk + 1) * chunk_size, length))
        )
        # exact in float64, and in float32 for the factors the model admits
        terms = [
            (left[:, t, :, :, None] * right[:, t, :, None, :]).astype(np.float32) for t in tokens
        ]
        state = state + _tree_sum(terms, SHAPES[int(rng.integers(len(SHAPES)))], rng)
    return state


def chunked_outer_sum(
    left: np.ndarray,
    right: np.ndarray,
    initial: np.ndarray | None,
    *,
    chunk_size: int,
    cu_seqlens: np.ndarray | None,
    reverse: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """One draw of ``initial + sum_t left_t^T right_t`` per sequence and head (module
    docstring), float32 ``[N, H, K, V]``.

    ``left [B, T, H, K]`` and ``right [B, T, H, V]`` hold the factors as float64 (their
    products must be exact in float32 for the draw to model the kernels); ``initial`` is
    None (zeros) or ``[N, H, K, V]``; ``reverse`` walks the chunks from the last.
    """
    left = np.asarray(left, np.float64)
    right = np.asarray(right, np.float64)
    batch, seq_len, heads, key_dim = left.shape
    bounds = [(0, seq_len)] if cu_seqlens is None else list(itertools.pairwise(cu_seqlens))
    rows = batch if cu_seqlens is None else 1
    shape = (len(bounds) * rows, heads, key_dim, right.shape[-1])
    states = np.zeros(shape, np.float32) if initial is None else np.asarray(initial, np.float32)
    return np.concatenate(
        [
            _sequence_state(
                left[:, start:end],
                right[:, start:end],
                states[index * rows : (index + 1) * rows],
                chunk_size=chunk_size,
                reverse=reverse,
                rng=rng,
            )
            for index, (start, end) in enumerate(bounds)
        ]
    )
