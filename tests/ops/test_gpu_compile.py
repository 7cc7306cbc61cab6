"""Compile-only check of every shipped Triton kernel configuration: each compiles to PTX
and a cubin for sm_90 (Hopper) on this machine, in a subprocess per kernel module
(kernels defined under the interpreter cannot be compiled), and fits the shared memory an
sm_90 block may use (a kernel over it compiles but cannot launch). A kernel compiled with
``enable_fp_fusion=False`` (the sampler's bit-exact float32 arithmetic) must contain no
fused multiply-add."""

from __future__ import annotations

import functools
import importlib

import pytest

import tops.gpu  # noqa: F401  (configures Triton before the kernel modules are imported)
from tops.compile_only import (
    GPU_KERNEL_MODULES,
    SM90_SHARED_MEMORY_BYTES,
    compile_gpu_kernels_in_subprocess,
)


@functools.cache
def _hopper_results(module: str) -> dict[str, dict]:
    return {r["name"]: r for r in compile_gpu_kernels_in_subprocess(module)}


def _configs() -> list:
    return [
        pytest.param(
            module,
            config,
            id=f"{module.split('.')[-2]}-{config.name}",
            marks=pytest.mark.xdist_group(f"sm90/{module}"),
        )
        for module in GPU_KERNEL_MODULES
        for config in importlib.import_module(module).shipped_configs()
    ]


@pytest.mark.parametrize(("module", "config"), _configs())
def test_gpu_compiles_for_sm90(module, config):
    result = _hopper_results(module)[config.name]
    assert result["ok"], result.get("error")
    assert result["cubin_bytes"] > 0 and result["ptx_bytes"] > 0
    assert result["shared_bytes"] <= SM90_SHARED_MEMORY_BYTES
    if config.options.get("enable_fp_fusion") is False:
        assert result["fma_instructions"] == 0
