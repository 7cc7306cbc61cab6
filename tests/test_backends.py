"""Backend availability and the interpreter's NumPy requirement, decided without running
a kernel (the subprocess tests in tests/precision/test_installed.py run them for real)."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest

from tops import backends


@pytest.fixture
def fresh_caches():
    """Forget the cached answers before and after the test."""
    backends.gpu_available.cache_clear()
    backends.gpu_mode.cache_clear()
    yield
    backends.gpu_available.cache_clear()
    backends.gpu_mode.cache_clear()


def test_without_torch_the_gpu_backend_is_unavailable_and_says_what_to_install(
    monkeypatch, fresh_caches
):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "torch" else find_spec(name)
    )
    assert not backends.gpu_available()
    assert not backends.available("gpu") and backends.available("tpu")
    assert backends.modes()["gpu"] == backends.UNAVAILABLE
    with pytest.raises(ImportError, match=r"pip install 'tops\[gpu\]' \(missing: torch\)"):
        backends.gpu_mode()


@pytest.mark.parametrize(
    ("triton", "numpy", "refused"),
    [("3.6.0", "2.4.6", True), ("3.6.0", "2.2.6", False), ("3.7.0", "2.5.5", False)],
)
def test_the_interpreter_refuses_triton_before_3_7_under_numpy_2_4(
    monkeypatch, triton, numpy, refused
):
    versions = {"triton": triton, "numpy": numpy}
    monkeypatch.setattr(importlib.metadata, "version", versions.__getitem__)
    if refused:
        with pytest.raises(ImportError, match=r"install 'numpy<2.4' or 'triton>=3.7'"):
            backends.require_interpretable_numpy()
    else:
        backends.require_interpretable_numpy()
