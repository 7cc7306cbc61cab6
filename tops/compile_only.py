"""Compile-only checks that need no accelerator.

* :func:`lower_for_tpu`: ``jax.export`` of a jitted function for ``platforms=("tpu",)``
  runs the Pallas TPU lowering to Mosaic on any machine and rejects what it cannot lower
  (block shapes, unsupported operations). Mosaic's own compiler runs on a TPU only.
* :func:`compile_for_hopper`: ``triton.compile`` of one kernel configuration for
  ``GPUTarget("cuda", 90, 32)`` produces PTX and a cubin (Triton ships ptxas).

Triton kernels defined under the interpreter cannot be compiled, so
:func:`compile_gpu_kernels_in_subprocess` compiles every shipped configuration in a fresh
process with ``TOPS_TRITON_COMPILE_ONLY=1`` (``python -m tops.compile_only``).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

# Modules whose ``compile_configs()`` list every shipped Triton kernel configuration.
GPU_KERNEL_MODULES = (
    "tops.gpu.temperature_softmax.kernel",
    "tops.gpu.topk.kernel",
    "tops.gpu.simple_gla.kernel",
    "tops.gpu.simple_gla.backward",
    "tops.gpu.sampling.kernel",
)
# The shared memory one sm_90 block may use (227 KiB, opt-in): a kernel compiled above it
# compiles but fails to launch ("out of resources"), so the compile check rejects it.
SM90_SHARED_MEMORY_BYTES = 232448


def lower_for_tpu(fn, *shape_structs) -> str:
    """Lower ``jax.jit(fn)`` for TPU with ``jax.export``; returns the StableHLO text with
    the embedded Mosaic kernels. Raises whatever the Pallas TPU lowering rejects."""
    import jax

    from tops.backends import lowering_for_tpu

    with lowering_for_tpu():
        exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(*shape_structs)
    return exported.mlir_module()


def compile_for_hopper(config: dict) -> dict[str, int]:
    """Compile one configuration (``kernel``, ``signature``, ``constexprs``, and
    ``num_warps`` or the full launch ``options`` such as ``enable_fp_fusion``) for sm_90;
    returns the PTX and cubin sizes and the shared memory per block in bytes, and the
    number of fused multiply-adds in the PTX."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=config["kernel"], signature=config["signature"], constexprs=config["constexprs"]
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", 90, 32),
        options=config.get("options", {"num_warps": config["num_warps"]}),
    )
    return {
        "ptx_bytes": len(compiled.asm["ptx"]),
        "cubin_bytes": len(compiled.asm["cubin"]),
        "shared_bytes": compiled.metadata.shared,
        "fma_instructions": compiled.asm["ptx"].count("fma."),
    }


def _compile_all(module_names) -> list[dict]:
    results = []
    for module_name in module_names:
        for config in importlib.import_module(module_name).compile_configs():
            result = {"module": module_name, "name": config["name"]}
            try:
                result.update(compile_for_hopper(config), ok=True)
            except Exception as error:  # reported per configuration, not raised
                result.update(ok=False, error=f"{type(error).__name__}: {error}")
            results.append(result)
    return results


def compile_gpu_kernels_in_subprocess(*module_names: str) -> list[dict]:
    """Compile every shipped Triton configuration of ``module_names`` (default: all of
    ``GPU_KERNEL_MODULES``) for sm_90 in a fresh process; one ``{"module", "name", "ok",
    "ptx_bytes", "cubin_bytes", "shared_bytes", "fma_instructions" | "error"}`` per
    configuration."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TOPS_TRITON_COMPILE_ONLY"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "tops.compile_only", *module_names],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_compile_all(sys.argv[1:] or GPU_KERNEL_MODULES)))
