"""The GPU-only variants of temperature softmax: ``out=`` and in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tops import backends, cpu, gpu


def _logits(batch=3, vocab=5000, dtype=torch.float32):
    x = np.random.default_rng(9).standard_normal((batch, vocab)).astype(np.float32)
    return x, torch.from_numpy(x.copy()).to(dtype).to(backends.torch_device())


@pytest.mark.parametrize("vocab", [5000, 40000])
def test_gpu_in_place_writes_the_probabilities_into_the_logits(vocab):
    x, logits = _logits(vocab=vocab)
    result = gpu.temperature_softmax_(logits, 0.8)
    assert result is logits
    np.testing.assert_allclose(logits.cpu().numpy(), cpu.temperature_softmax(x, 0.8), rtol=2e-6)


def test_gpu_out_variant_and_its_validation():
    _, logits = _logits(dtype=torch.bfloat16)
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    assert gpu.temperature_softmax(logits, 0.5, out=out) is out
    ref = cpu.temperature_softmax(logits.float().cpu().numpy(), 0.5)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=2e-6)
    with pytest.raises(ValueError, match="out must be float32"):
        gpu.temperature_softmax(logits, 0.5, out=out.to(torch.bfloat16))
    with pytest.raises(ValueError, match="out must be float32 with shape"):
        gpu.temperature_softmax(logits, 0.5, out=out[:, :10])


def test_gpu_in_place_requires_a_float32_buffer():
    _, logits = _logits(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="logits must be float32"):
        gpu.temperature_softmax_(logits, 1.0)


def test_gpu_accepts_strided_rows():
    x, logits = _logits(batch=4, vocab=300)
    view = logits[::2]
    np.testing.assert_allclose(
        gpu.temperature_softmax(view, 1.0).cpu().numpy(),
        cpu.temperature_softmax(x[::2], 1.0),
        rtol=2e-6,
    )


def test_gpu_no_grad_through_out_and_in_place():
    _, logits = _logits(batch=2, vocab=50)
    logits.requires_grad_()
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    with pytest.raises(ValueError, match="out= is not differentiable"):
        gpu.temperature_softmax(logits, 0.5, out=out)
    with pytest.raises(ValueError, match="not differentiable"):
        gpu.temperature_softmax_(logits, 0.5)
    with torch.no_grad():
        assert gpu.temperature_softmax(logits, 0.5, out=out) is out
    expected = gpu.temperature_softmax(logits, 0.5)
    assert expected.requires_grad
    np.testing.assert_array_equal(out.cpu().numpy(), expected.detach().cpu().numpy())
