"""Compile-only checks that need no accelerator.

* :func:`compile_for_tpu`: the real TPU compiler (libtpu, installed with the project)
  compiles ``jax.jit(fn)`` for one chip of ``TPU_CHIPS`` on compile-only devices from
  ``jax.experimental.topologies``: Mosaic's whole pipeline (layouts, loop carries, VMEM
  limits), exactly what that TPU would run.
  :func:`compile_tpu_kernels_in_subprocess` runs it over a module's shipped configurations
  in a fresh process (``python -m tops.compile_only --tpu``).
* Every kernel module declares what it ships in one way: ``shipped_configs()`` returns a
  list of :class:`PallasConfig` (TPU; ``production_configs()`` adds the production shapes)
  or :class:`TritonConfig` (GPU), one per compiled variant.
* :func:`lower_for_tpu`: ``jax.export`` for ``platforms=("tpu",)`` stops at the
  Pallas-to-Mosaic lowering; it is kept for what has no kernel to compile.
* :func:`compile_for_hopper`: ``triton.compile`` of one kernel configuration for
  ``GPUTarget("cuda", 90, 32)`` produces PTX and a cubin (Triton ships ptxas).

Triton kernels defined under the interpreter cannot be compiled, so
:func:`compile_gpu_kernels_in_subprocess` compiles every shipped configuration in a fresh
process with ``TOPS_TRITON_COMPILE_ONLY=1`` (``python -m tops.compile_only``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class PallasConfig:
    """One shipped Pallas configuration: ``jax.jit(fn)`` on arguments of ``shapes``
    (``jax.ShapeDtypeStruct``), through the public wrapper so that the compiled program
    is the one users run."""

    name: str
    fn: Callable[..., Any]
    shapes: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """One shipped Triton kernel configuration: the ``@triton.jit`` kernel, its
    signature (argument name to Triton type: ``"*fp32"``, ``"i32"``, ``"constexpr"``),
    the values of its constexprs (``None`` for a pointer left out), and the launch
    ``options`` (``num_warps``, and any other such as ``enable_fp_fusion``)."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    options: dict[str, Any]

    @classmethod
    def build(
        cls,
        name: str,
        kernel: Any,
        *,
        pointers: dict[str, str],
        integers: tuple[str, ...] = (),
        constexprs: dict[str, Any],
        **options: Any,
    ) -> TritonConfig:
        """A configuration whose signature is ``pointers`` (name to ``"*dtype"``), then
        ``integers`` (``i32``), then ``constexprs``: the order of the kernel's arguments."""
        signature = {
            **pointers,
            **dict.fromkeys(integers, "i32"),
            **dict.fromkeys(constexprs, "constexpr"),
        }
        return cls(name, kernel, signature, dict(constexprs), dict(options))


# Modules whose ``shipped_configs()`` list every shipped Triton kernel configuration.
GPU_KERNEL_MODULES = (
    "tops.gpu.softmax.kernel",
    "tops.gpu.selection.kernel",
    "tops.gpu.simple_gla.kernel",
    "tops.gpu.simple_gla.backward",
    "tops.gpu.sampling.kernel",
)


@dataclasses.dataclass(frozen=True)
class TpuChip:
    """A TPU generation the Pallas kernels are compiled for: the compile-only topology
    that stands for it and the VMEM of one TensorCore (the compiler's capacity in its
    ``Allocation ... would exceed memory`` message, libtpu 0.0.42.1)."""

    name: str
    topology: str
    vmem_bytes: int


# The supported generations: every shipped Pallas configuration compiles for each.
TPU_CHIPS = {
    chip.name: chip
    for chip in (
        TpuChip("v5e", "v5e:2x2", 128 * 2**20),
        TpuChip("v5p", "v5p:2x2x1", 64 * 2**20),
        TpuChip("v6e", "v6e:2x2", 128 * 2**20),
    )
}
# Not supported: whole-row top-k and the arbitrary-k sampler hold up to 2**18 columns of
# 8-16 rows in VMEM (16-40 MiB at the production vocabularies), over v4's 16 MiB. libtpu
# 0.0.42.1 cannot target v7x ("Invalid TPU external name").
UNSUPPORTED_TPU_CHIPS = {"v4": TpuChip("v4", "v4:2x2x1", 16 * 2**20)}
# Modules whose ``shipped_configs()`` / ``production_configs()`` list every shipped
# Pallas configuration.
TPU_KERNEL_MODULES = (
    "tops.ops.softmax.kernel",
    "tops.ops.selection.kernel",
    "tops.ops.sampling.kernel",
    "tops.ops.simple_gla.kernel",
)
# Environment of a process that compiles for TPU on compile-only devices: never start a
# TPU backend (a real TPU stays with the parent), skip the metadata-server query, and let
# several such processes load libtpu at once (pytest-xdist workers).
TPU_COMPILE_ENV = {
    "JAX_PLATFORMS": "cpu",
    "TPU_SKIP_MDS_QUERY": "1",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}
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


def compile_for_tpu(fn, *shape_structs, chip: str) -> dict:
    """Compile ``jax.jit(fn)`` with the TPU compiler for one chip of ``TPU_CHIPS`` (or
    ``UNSUPPORTED_TPU_CHIPS``) on one compile-only device. Returns ``{"seconds",
    "kernel_names", "kernels"}``: the Mosaic kernels' names (sorted), and per compiled
    kernel ``{"name", "vmem_offset", "vmem_used", "vmem_limit", "vmem_declared",
    "estimated_cycles"}`` (:func:`mosaic_kernels`): its name (matched to the lowered module
    by its serialized body; None under the static profile, which drops the body), the
    VMEM below the kernel's and the kernel's own, its scoped limit (the declared one
    clamped to the chip, or its default; None if it records none) and the kernel's
    ``vmem_limit_bytes`` (None if not set), in bytes. Raises what the compiler rejects."""
    import jax
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from tops.backends import lowering_for_tpu

    spec = TPU_CHIPS.get(chip) or UNSUPPORTED_TPU_CHIPS[chip]
    devices = topologies.get_topology_desc(platform="tpu", topology_name=spec.topology).devices
    sharding = NamedSharding(Mesh(devices[:1], ("x",)), PartitionSpec())
    args = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for s in shape_structs]
    start = time.perf_counter()
    with lowering_for_tpu():
        lowered = jax.jit(fn).lower(*args)
        compiled = lowered.compile()
    seconds = time.perf_counter() - start
    declared = _declared_kernels(lowered.as_text())
    kernels = mosaic_kernels(compiled.as_text())
    for kernel in kernels:
        body = kernel.pop("body")
        if body is not None and body not in declared:
            raise RuntimeError("a compiled Mosaic kernel is not in the lowered module")
        kernel["name"], kernel["vmem_declared"] = declared.get(body, (None, None))
    names = sorted(name for name, _ in declared.values())
    return {"seconds": seconds, "kernel_names": names, "kernels": kernels}


def _declared_kernels(stablehlo_text: str) -> dict[str, tuple[str, int | None]]:
    """``{serialized Mosaic body: (kernel name, vmem_limit_bytes or None)}`` of the lowered
    module, the limit before the compiler clamps it to the chip. The compiled HLO keeps
    the same body but not the order of the calls."""
    declared = {}
    for line in stablehlo_text.splitlines():
        if "@tpu_custom_call" not in line:
            continue
        body = re.search(r"body\\22: \\22([^\\]*)", line).group(1)
        name = re.search(r'kernel_name = "([^"]*)"', line)
        size = re.search(r"scoped_memory_configs\\22: \[[^]]*size\\22: (\d+)", line)
        declared[body] = (name.group(1) if name else "?", int(size.group(1)) if size else None)
    return declared


def mosaic_kernels(hlo_text: str) -> list[dict]:
    """The Mosaic kernels of compiled HLO text: ``{"body", "vmem_offset", "vmem_used",
    "vmem_limit", "estimated_cycles"}`` per ``tpu_custom_call`` from its backend config:
    the serialized kernel (None where the static profile drops it); where the kernel's
    scoped VMEM starts (above what XLA keeps in VMEM around it, such as a prefetched
    operand: the compiler records the used VMEM as an end address from 0); the kernel's
    own VMEM; its scoped limit; and the static cycle estimate (None unless libtpu runs
    with ``--xla_jf_dump_static_llo_profile_to``)."""

    def scoped(field, line):
        """``(offset, size)`` of a scoped-memory field (summed sizes; None if empty)."""
        found = re.search(rf'"{field}":\[(.*?)\]', line)
        sizes = re.findall(r'"size":"(\d+)"', found.group(1)) if found else []
        offsets = re.findall(r'"offset":"(\d+)"', found.group(1)) if found else []
        return (min(map(int, offsets)), sum(map(int, sizes))) if sizes else (0, None)

    kernels = []
    for line in hlo_text.splitlines():
        if 'custom_call_target="tpu_custom_call"' not in line:
            continue
        offset, limit = scoped("scoped_memory_configs", line)
        _, end = scoped("used_scoped_memory_configs", line)
        cycles = re.search(r'"estimated_cycles":"(\d+)"', line)
        body = re.search(r'"body":"([^"]*)"', line)
        kernels.append(
            {
                "body": body.group(1) if body else None,
                "vmem_offset": offset,
                "vmem_used": (end or offset) - offset,
                "vmem_limit": limit,
                "estimated_cycles": int(cycles.group(1)) if cycles else None,
            }
        )
    return kernels


def _first_lines(error: Exception, count: int = 8) -> str:
    lines = [line for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
    return "\n".join(lines[:count])


def _import(module: str):
    """A module by name, or by the path of its file (a test module)."""
    if not module.endswith(".py"):
        return importlib.import_module(module)
    spec = importlib.util.spec_from_file_location(os.path.basename(module)[:-3], module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def _compile_tpu_configs(module_name: str, chips, production: bool) -> list[dict]:
    module = _import(module_name)
    configs = module.production_configs() if production else module.shipped_configs()
    results = []
    for chip in chips:
        for config in configs:
            result = {"module": module_name, "name": config.name, "chip": chip}
            try:
                result.update(compile_for_tpu(config.fn, *config.shapes, chip=chip), ok=True)
            except Exception as error:  # reported per configuration, not raised
                result.update(ok=False, error=_first_lines(error))
            results.append(result)
    return results


def compile_tpu_kernels_in_subprocess(
    module_name: str, chips=tuple(TPU_CHIPS), *, production: bool = False
) -> list[dict]:
    """Compile every configuration of ``module_name``'s (a module name or a ``.py`` path)
    ``shipped_configs()`` (or ``production_configs()``) for each chip in a fresh process
    under ``TPU_COMPILE_ENV``; one ``{"module", "name", "chip", "ok", "seconds", "kernels" |
    "error"}`` per configuration and chip, ``error`` the compiler's first lines."""
    arguments = ["--tpu", module_name, *chips, *(["--production"] if production else [])]
    return _run_compiler_process(arguments, {**os.environ, **TPU_COMPILE_ENV})


def _run_compiler_process(arguments: list[str], env: dict[str, str]) -> list[dict]:
    """``python -m tops.compile_only ARGUMENTS`` in a fresh process under ``env``: the
    JSON list on its last line of output, or a RuntimeError with its stderr's tail."""
    command = [sys.executable, "-m", "tops.compile_only", *arguments]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_for_hopper(config: TritonConfig) -> dict[str, int]:
    """Compile one configuration for sm_90; returns the PTX and cubin sizes and the shared
    memory per block in bytes, and the number of fused multiply-adds in the PTX."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=config.kernel, signature=config.signature, constexprs=config.constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=config.options)
    return {
        "ptx_bytes": len(compiled.asm["ptx"]),
        "cubin_bytes": len(compiled.asm["cubin"]),
        "shared_bytes": compiled.metadata.shared,
        "fma_instructions": compiled.asm["ptx"].count("fma."),
    }


def _compile_all(module_names) -> list[dict]:
    results = []
    for module_name in module_names:
        for config in importlib.import_module(module_name).shipped_configs():
            result = {"module": module_name, "name": config.name}
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
    return _run_compiler_process(list(module_names), env)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tpu"]:
        os.environ.update(TPU_COMPILE_ENV)  # before JAX is imported
        arguments = sys.argv[2:]
        production = "--production" in arguments
        module_name, *chips = (a for a in arguments if a != "--production")
        print(json.dumps(_compile_tpu_configs(module_name, chips, production)))
    else:
        print(json.dumps(_compile_all(sys.argv[1:] or GPU_KERNEL_MODULES)))
