"""The real TPU compiler on every shipped Pallas configuration, for every supported chip
(``tops.compile_only.TPU_CHIPS``), on this CPU machine: libtpu compiles for compile-only
devices, so Mosaic's own checks (layouts, loop carries, VMEM) run, which the lowering
alone (``jax.export``) never reaches. One subprocess per kernel module and chip (libtpu
loads once per process); the default suite compiles each module's ``shipped_configs()``
(every kernel and configuration), ``-m slow`` adds the production shapes of
``production_configs()``.

Each configuration must compile, contain at least one Mosaic kernel, and keep every
kernel's VMEM within the compiler's scoped limit (``vmem_limit_bytes`` clamped to the
chip, or its default) and the declared ``vmem_limit_bytes`` within the chip's VMEM (the
compiler accepts a larger one silently)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.compile_only import (
    TPU_CHIPS,
    TPU_KERNEL_MODULES,
    PallasConfig,
    compile_tpu_kernels_in_subprocess,
)
from tops.precision.testing import requires_libtpu

pytestmark = requires_libtpu


def _problems(result: dict) -> list[str]:
    if not result["ok"]:
        return [result["error"]]
    chip_vmem = TPU_CHIPS[result["chip"]].vmem_bytes
    problems = [] if result["kernels"] else ["no Mosaic kernel (tpu_custom_call) in the HLO"]
    for kernel in result["kernels"]:
        used, limit, declared = kernel["vmem_used"], kernel["vmem_limit"], kernel["vmem_declared"]
        below = kernel["vmem_offset"]
        if (
            not used <= (limit or chip_vmem) <= chip_vmem
            or below + used > chip_vmem
            or (declared or 0) > chip_vmem
        ):
            problems.append(
                f"{kernel['name']}: VMEM used {used} B above {below} B of XLA's, compiler "
                f"limit {limit} B, vmem_limit_bytes {declared} B, chip {chip_vmem} B"
            )
    return problems


def _check(module: str, chip: str, production: bool) -> None:
    results = compile_tpu_kernels_in_subprocess(module, (chip,), production=production)
    assert results, f"{module} lists no configuration"
    failures = [
        f"op {module.split('.')[-2]}, configuration {r['name']}, chip {chip} "
        f"({TPU_CHIPS[chip].topology}):\n  " + "\n  ".join(_problems(r))
        for r in results
        if _problems(r)
    ]
    assert not failures, "\n".join(failures)


_CASES = [
    pytest.param(module, chip, id=f"tpu-{module.split('.')[-2]}-{chip}")
    for module in TPU_KERNEL_MODULES
    for chip in TPU_CHIPS
]


@pytest.mark.parametrize(("module", "chip"), _CASES)
def test_tpu_compiles(module, chip):
    _check(module, chip, production=False)


@pytest.mark.slow
@pytest.mark.parametrize(("module", "chip"), _CASES)
def test_tpu_compiles_at_production_shapes(module, chip):
    _check(module, chip, production=True)


# ---------------------------------------------------------------------------------------
# The check can fail: what the lowering passes and Mosaic's compiler rejects.


def _bool_carry(x):
    """A boolean vector carried through a loop: lowers, then fails in Mosaic's compiler
    (the bug the temperature softmax had)."""

    def kernel(x_ref, o_ref):
        def body(i, flag):
            return flag | jnp.isnan(x_ref[...])

        flag = lax.fori_loop(0, 4, body, jnp.zeros(x_ref.shape, jnp.bool_))
        o_ref[...] = flag.astype(jnp.float32)

    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape, jnp.float32))(x)


def _copy(x, *, vmem_limit_bytes):
    """A copy of 8-row blocks, double-buffered in and out: 4 x 8 rows in VMEM."""

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    spec = pl.BlockSpec((8, x.shape[1]), lambda i: (i, 0))
    return pl.pallas_call(
        kernel,
        grid=(2,),
        in_specs=[spec],
        out_specs=spec,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        compiler_params=pltpu.CompilerParams(vmem_limit_bytes=vmem_limit_bytes),
    )(x)


def shipped_configs() -> list[PallasConfig]:
    """Kernels the check must reject, read by ``python -m tops.compile_only --tpu``: a
    boolean loop carry (the bug the temperature softmax had), blocks over the chip's
    VMEM (4 x 64 MiB), and a declared limit over it, which the compiler accepts."""
    return [
        PallasConfig("bool_carry", _bool_carry, (jax.ShapeDtypeStruct((8, 128), jnp.float32),)),
        PallasConfig(
            "over_vmem",
            functools.partial(_copy, vmem_limit_bytes=100 * 2**20),
            (jax.ShapeDtypeStruct((16, 2**21), jnp.float32),),
        ),
        PallasConfig(
            "limit_over_chip",
            functools.partial(_copy, vmem_limit_bytes=200 * 2**20),
            (jax.ShapeDtypeStruct((16, 2**10), jnp.float32),),
        ),
    ]


def test_tpu_compile_check_rejects_what_the_lowering_passes():
    from tops.compile_only import lower_for_tpu

    for config in shipped_configs():
        assert "tpu_custom_call" in lower_for_tpu(config.fn, *config.shapes)
    results = {r["name"]: r for r in compile_tpu_kernels_in_subprocess(__file__, ("v5e",))}
    assert "scf.for" in results["bool_carry"]["error"]
    assert "Ran out of memory in memory space vmem" in results["over_vmem"]["error"]
    assert results["limit_over_chip"]["ok"]
    (problem,) = _problems(results["limit_over_chip"])
    assert f"vmem_limit_bytes {200 * 2**20} B, chip {128 * 2**20} B" in problem
