"""float64 reference for temperature softmax and its gradient; ``tops.spec.temperature_softmax``
states the semantics."""

from __future__ import annotations

import math

import numpy as np

from tops.cpu import arith
from tops.spec.temperature_softmax import SMALLEST_NORMAL_F32, UNIFORM_TEMPERATURE, validate


def temperature_softmax(logits, temperature) -> np.ndarray:
    """``softmax(logits / T)`` per row, in float64, with the special rows of the contract.

    Args:
      logits: ``[B, V]`` array of bf16, f16 or f32 values (anything NumPy converts).
      temperature: scalar or ``[B]``; rounded to float32 first, as every kernel does.

    Returns:
      ``float64[B, V]`` probabilities. Per row: NaN temperature, negative temperature or
      any NaN logit gives all NaN; an all ``-inf`` row gives all zeros; a temperature
      below the smallest normal float32 gives a one-hot row at the first maximum; one of
      at least ``2**64`` (``+inf`` included) a row uniform over the entries above
      ``-inf``; a ``+inf`` maximum shares the mass evenly among the ``+inf`` entries.
    """
    validate(logits, temperature)
    x = np.asarray(logits, dtype=np.float64)
    t = np.broadcast_to(np.asarray(temperature, np.float32), x.shape[:1]).astype(np.float64)
    out = np.zeros_like(x)
    for row in range(x.shape[0]):
        out[row] = _softmax_row(x[row], t[row])
    return out


def _softmax_row(x: np.ndarray, t: float) -> np.ndarray:
    if np.isnan(t) or t < 0 or np.isnan(x).any():
        return np.full_like(x, np.nan)
    m = x.max()
    if m == -np.inf:
        return np.zeros_like(x)
    if t < SMALLEST_NORMAL_F32:
        one_hot = np.zeros_like(x)
        one_hot[int(np.argmax(x))] = 1.0  # argmax returns the first maximum
        return one_hot
    z = np.full_like(x, -np.inf)
    at_max = x == m
    z[at_max] = 0.0
    if np.isfinite(m):
        finite = np.isfinite(x)
        z[finite] = 0.0 if t >= UNIFORM_TEMPERATURE else (x[finite] - m) / t
    e = arith.exp(z)
    return e / e.sum()


def temperature_softmax_vjp(logits, temperature, cotangent) -> np.ndarray:
    """The gradient of ``sum(temperature_softmax(logits, T) * cotangent)`` w.r.t. the
    logits, in float64 (the temperature gets none).

    Args:
      logits: as for :func:`temperature_softmax`.
      temperature: as for :func:`temperature_softmax`.
      cotangent: ``[B, V]``, anything NumPy converts to float64.

    Returns:
      ``float64[B, V]``. Per row, in order of precedence: the forward's NaN rows give NaN;
      greedy (``T < 2**-126``) and uniform (``T >= 2**64``) rows give zeros; a row whose
      cotangent is not finite gives NaN; otherwise ``p * (g - sum(p * g)) / T``, the sum
      exact (``math.fsum``). All ``-inf`` rows and ``-inf`` entries (``p = 0``) get zeros;
      ``+inf`` logits get the limit of equal large finite logits.
    """
    p = temperature_softmax(logits, temperature)
    g = np.asarray(cotangent, dtype=np.float64)
    if g.shape != p.shape:
        raise ValueError(f"cotangent must have shape {p.shape}, got {g.shape}")
    t = np.broadcast_to(np.asarray(temperature, np.float32), p.shape[:1]).astype(np.float64)
    dx = np.zeros_like(p)
    for row in range(p.shape[0]):
        sampled = SMALLEST_NORMAL_F32 <= t[row] < UNIFORM_TEMPERATURE
        if np.isnan(p[row]).any() or (sampled and not np.isfinite(g[row]).all()):
            dx[row] = np.nan
        elif sampled:
            s = math.fsum(p[row] * g[row])
            dx[row] = p[row] * (g[row] - s) / t[row]
    return dx
