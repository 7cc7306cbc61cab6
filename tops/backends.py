"""Backend detection and mode selection: the one place that decides how kernels run.

Modes, per backend:

=========  ===================================  =======================================
backend    on its own hardware                  anywhere else
=========  ===================================  =======================================
tpu        ``tpu``: Pallas lowered to Mosaic    ``tpu-interpret``: Pallas TPU interpret
gpu        ``gpu``: Triton on CUDA              ``gpu-interpret``: Triton interpreter
cpu        ``cpu``: float64 reference           ``cpu``
=========  ===================================  =======================================

Environment variables:

``TOPS_INTERPRET=1``
    Force ``tpu-interpret`` and ``gpu-interpret`` even where the hardware exists.
``TOPS_TPU_INTERPRET=checked``
    In ``tpu-interpret``, run Pallas under ``pltpu.InterpretParams`` with race
    detection and NaN-filled uninitialised memory instead of the plain interpreter.
``TOPS_TRITON_COMPILE_ONLY=1``
    Never select the Triton interpreter: set by ``tops.compile_only`` for the process
    that compiles the Triton kernels for sm_90 on a machine without a GPU.

The GPU backend needs torch and triton (``pip install 'tops[gpu]'``); without them
:func:`modes` reports it ``unavailable`` and the TPU and CPU sides work alone.

The Triton interpreter is chosen by ``TRITON_INTERPRET=1``, which Triton reads when a
kernel is *defined*; :func:`configure_triton` sets it and must run before any module
that defines a Triton kernel is imported (``tops.gpu`` calls it first thing).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import sys

BACKENDS = ("tpu", "gpu", "cpu")
_TRUTHY = ("1", "true", "yes", "on")


def interpret_forced() -> bool:
    """Whether ``TOPS_INTERPRET`` forces the interpret modes."""
    return os.environ.get("TOPS_INTERPRET", "").strip().lower() in _TRUTHY


@functools.cache
def tpu_mode() -> str:
    """``"tpu"`` when JAX sees a TPU and interpretation is not forced, else ``"tpu-interpret"``."""
    if interpret_forced():
        return "tpu-interpret"
    import jax

    try:
        has_tpu = bool(jax.devices("tpu"))
    except RuntimeError:
        has_tpu = False
    return "tpu" if has_tpu else "tpu-interpret"


def triton_interprets() -> bool:
    """Whether Triton defines kernels for its interpreter (``TRITON_INTERPRET``, which
    :func:`configure_triton` sets): kernels that round operands the way tensor cores do
    read this when they are imported."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


GPU_PACKAGES = ("torch", "triton")
GPU_INSTALL_HINT = "the GPU backend (tops.gpu) needs torch and triton: pip install 'tops[gpu]'"
UNAVAILABLE = "unavailable"


@functools.cache
def gpu_available() -> bool:
    """Whether torch and triton are installed, so that ``tops.gpu`` can run."""
    return all(importlib.util.find_spec(name) is not None for name in GPU_PACKAGES)


def require_gpu() -> None:
    """Raise ImportError with the install hint when the GPU backend's packages are missing."""
    if not gpu_available():
        missing = [name for name in GPU_PACKAGES if importlib.util.find_spec(name) is None]
        raise ImportError(f"{GPU_INSTALL_HINT} (missing: {', '.join(missing)})")


@functools.cache
def gpu_mode() -> str:
    """``"gpu"`` when torch sees a CUDA device and interpretation is not forced.

    Raises ImportError naming ``tops[gpu]`` when torch or triton is missing."""
    require_gpu()
    if interpret_forced() or triton_interprets():
        return "gpu-interpret"
    import torch

    return "gpu" if torch.cuda.is_available() else "gpu-interpret"


def mode(backend: str) -> str:
    """The mode a backend runs in now."""
    if backend == "tpu":
        return tpu_mode()
    if backend == "gpu":
        return gpu_mode()
    if backend == "cpu":
        return "cpu"
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def available(backend: str) -> bool:
    """Whether ``backend`` can run here (only the GPU backend has optional packages)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend != "gpu" or gpu_available()


def modes() -> dict[str, str]:
    """``{backend: mode}`` for every backend; ``"unavailable"`` where it cannot run."""
    return {b: mode(b) if available(b) else UNAVAILABLE for b in BACKENDS}


def configure_triton() -> None:
    """Select the Triton interpreter when the GPU backend is interpreted.

    Must run before a module defining a ``@triton.jit`` kernel is imported.
    """
    if os.environ.get("TOPS_TRITON_COMPILE_ONLY") == "1":
        return
    if gpu_mode() == "gpu-interpret":
        require_interpretable_numpy()
        os.environ["TRITON_INTERPRET"] = "1"
        _reload_compiled_triton_library()


def _release(package: str) -> tuple[int, int]:
    major, minor = importlib.metadata.version(package).split(".")[:2]
    return int(major), int(minor)


def require_interpretable_numpy() -> None:
    """Triton's interpreter before 3.7 converts one-element arrays with ``int()``, which
    NumPy 2.4 refuses (triton-lang/triton#9171): every kernel with a run-time loop bound
    would fail deep inside; say what to install instead."""
    if _release("triton") < (3, 7) and _release("numpy") >= (2, 4):
        raise ImportError(
            f"the Triton interpreter of triton {importlib.metadata.version('triton')} fails "
            f"under NumPy {importlib.metadata.version('numpy')} (triton-lang/triton#9171): "
            "install 'numpy<2.4' or 'triton>=3.7' to run tops.gpu without a GPU"
        )


def _reload_compiled_triton_library() -> None:
    """Redefine Triton's own ``@triton.jit`` library (``tl.sum``, ``tl.cumsum``, the
    combine functions, ``tl.rand``) for the interpreter when the user imported Triton
    before tops: Triton decides at definition time, and the interpreter cannot call a
    compiled function, so every interpreted kernel would fail. Reloading reruns the
    definitions with ``TRITON_INTERPRET`` set and rebinds the ``triton.language`` names."""
    standard = sys.modules.get("triton.language.standard")
    if standard is None:
        return
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(standard.sum, InterpretedFunction):
        return
    for name in ("triton.language.standard", "triton.language.random", "triton.language"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def torch_device() -> str:
    """The torch device GPU-backend tensors live on: ``cuda``, or ``cpu`` when interpreted."""
    return "cuda" if gpu_mode() == "gpu" else "cpu"


_lowering_for_tpu = False


@contextlib.contextmanager
def lowering_for_tpu():
    """Within this context Pallas kernels are built for Mosaic (``interpret=False``)
    whatever the mode, so that ``jax.export`` can lower them for TPU on any machine."""
    global _lowering_for_tpu
    previous, _lowering_for_tpu = _lowering_for_tpu, True
    try:
        yield
    finally:
        _lowering_for_tpu = previous


def pallas_interpret():
    """The ``interpret=`` argument for ``pl.pallas_call`` in the current TPU mode."""
    if _lowering_for_tpu or tpu_mode() == "tpu":
        return False
    if os.environ.get("TOPS_TPU_INTERPRET", "").strip().lower() == "checked":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan")
    return True
