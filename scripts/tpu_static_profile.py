"""Static cycle estimates of the Pallas kernels from the TPU compiler, beside a reference.

No TPU needed: libtpu compiles each op at its benchmark shapes for one chip with
``--xla_jf_dump_static_llo_profile_to``, which records an estimated cycle count per
kernel. Each op is printed beside a reference compiled in the same run: a plain Pallas
copy (``o_ref[...] = x_ref[...]``) moving the op's minimum HBM bytes (softmax, top-k,
sampling) or a Pallas bf16 matmul of its FLOPs (simple GLA forward), and the ratio.

Caveats (docs/benchmarks.md): an estimate, not a time; it counts every ``pl.when`` branch
and under-counts data-dependent loops (``fori_loop`` with a traced bound, ``lax.cond``),
so it is a relative signal for branch-free kernels only; XLA glue outside the kernels is
not counted. Usage: ``python scripts/tpu_static_profile.py [--chip v6e] [--op softmax]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tops.compile_only import TPU_CHIPS, TPU_COMPILE_ENV

os.environ.update(TPU_COMPILE_ENV)
os.environ["LIBTPU_INIT_ARGS"] = (
    os.environ.get("LIBTPU_INIT_ARGS", "")
    + f" --xla_jf_dump_static_llo_profile_to={tempfile.mkdtemp(prefix='tops-llo-')}"
)

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tops.compile_only import compile_for_tpu
from tops.ops.sampling import sample
from tops.ops.selection import topk
from tops.ops.simple_gla import chunk_simple_gla
from tops.ops.softmax import temperature_softmax

COPY_COLUMNS = 8192
# Ops whose kernels loop over data-dependent trip counts or branches: the estimate is
# not a bound there.
DATA_DEPENDENT = {"topk": "passes after the first", "sampling": "lax.cond and searches"}


def _struct(shape, dtype):
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


def copy_reference(hbm_bytes: int):
    """A Pallas copy of float32 rows of ``COPY_COLUMNS``, reading and writing
    ``hbm_bytes`` in all (8-row blocks)."""
    rows = max(8, math.ceil(hbm_bytes / (8 * COPY_COLUMNS) / 8) * 8)

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    def fn(x):
        spec = pl.BlockSpec((8, COPY_COLUMNS), lambda i: (i, 0))
        return pl.pallas_call(
            kernel,
            grid=(rows // 8,),
            in_specs=[spec],
            out_specs=spec,
            out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        )(x)

    return (
        f"copy {rows * COPY_COLUMNS * 8 / 1e6:.1f} MB",
        fn,
        (_struct((rows, COPY_COLUMNS), "f4"),),
    )


def matmul_reference(flops: int, block: int = 512):
    """A Pallas bf16 matmul ``(n, n) @ (n, n)`` with float32 accumulation, ``2 n**3``
    about ``flops`` (``n`` a multiple of ``block``)."""
    n = max(block, round((flops / 2) ** (1 / 3) / block) * block)

    def kernel(a_ref, b_ref, o_ref):
        @pl.when(pl.program_id(2) == 0)
        def _init():
            o_ref[...] = jnp.zeros_like(o_ref)

        o_ref[...] += jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

    def fn(a, b):
        return pl.pallas_call(
            kernel,
            grid=(n // block,) * 3,
            in_specs=[
                pl.BlockSpec((block, block), lambda i, j, k: (i, k)),
                pl.BlockSpec((block, block), lambda i, j, k: (k, j)),
            ],
            out_specs=pl.BlockSpec((block, block), lambda i, j, k: (i, j)),
            out_shape=jax.ShapeDtypeStruct((n, n), jnp.float32),
        )(a, b)

    shape = _struct((n, n), "bfloat16")
    return f"matmul {2 * n**3 / 1e9:.1f} GFLOP", fn, (shape, shape)


def rows():
    """``(op, shape label, fn, shapes, reference)`` at the benchmark shapes, bf16."""
    for batch in (1, 32, 256):
        for vocab in (32000, 128256, 201088):
            shapes = (_struct((batch, vocab), "bfloat16"), _struct((batch,), "f4"))
            yield (
                "softmax",
                f"B={batch} V={vocab}",
                temperature_softmax,
                shapes,
                copy_reference(batch * vocab * (2 + 4)),
            )
    for batch in (1, 32, 256):
        for vocab in (128256, 201088):
            yield (
                "topk",
                f"B={batch} V={vocab} k=64",
                lambda x: topk(x, 64),
                (_struct((batch, vocab), "bfloat16"),),
                copy_reference(batch * vocab * 2 + batch * 64 * 6),
            )
    for batch in (16, 128):
        for vocab in (128256, 262144):
            for max_k in (None, 64):

                def fn(x, t, k, p, seed, step, max_k=max_k):
                    return sample(
                        x, temperature=t, seed=seed, step=step, top_k=k, top_p=p,
                        min_p=0.0, max_k=max_k, debug=False,
                    )  # fmt: skip

                vector = [_struct((batch,), d) for d in ("f4", "i4", "f4", "u4", "i4")]
                path = "arbitrary-k" if max_k is None else "bounded-k 64"
                yield (
                    "sampling",
                    f"B={batch} V={vocab} {path}",
                    fn,
                    (_struct((batch, vocab), "bfloat16"), *vector),
                    copy_reference(batch * vocab * 2),
                )
    for batch, seq_len, heads, dim in ((1, 8192, 16, 128), (4, 4096, 32, 128), (8, 2048, 32, 256)):
        chunk = 64
        qkv = _struct((batch, seq_len, heads, dim), "bfloat16")
        flops = 2 * batch * seq_len * heads * (2 * chunk * dim + 2 * dim * dim)
        yield (
            "simple_gla",
            f"B={batch} T={seq_len} H={heads} K=V={dim} C={chunk}",
            lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g, chunk_size=64),
            (qkv, qkv, qkv, _struct((batch, seq_len, heads), "f4")),
            matmul_reference(flops),
        )


def estimate(fn, shapes, chip):
    """``(kernel names, total estimated cycles or None, VMEM used)`` of one compile."""
    try:
        result = compile_for_tpu(fn, *shapes, chip=chip)
    except Exception as error:  # an aborted estimate is reported, not raised
        return f"failed: {str(error).splitlines()[0][:60]}", None, None
    cycles = [k["estimated_cycles"] for k in result["kernels"]]
    total = None if None in cycles or not cycles else sum(cycles)
    vmem = max(k["vmem_used"] for k in result["kernels"])
    return ", ".join(result["kernel_names"]), total, vmem


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chip", default="v6e", choices=sorted(TPU_CHIPS))
    parser.add_argument("--op", choices=("softmax", "topk", "sampling", "simple_gla"))
    args = parser.parse_args()
    print(f"# static cycle estimates, {args.chip}, bf16 (libtpu static LLO profile)\n")
    print("| op | shape | kernels | VMEM used | est. cycles | reference | ref. cycles | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for op, shape, fn, shapes, (ref_name, ref_fn, ref_shapes) in rows():
        if args.op and op != args.op:
            continue
        names, cycles, vmem = estimate(fn, shapes, args.chip)
        _, ref_cycles, _ = estimate(ref_fn, ref_shapes, args.chip)
        ratio = f"{cycles / ref_cycles:.2f}" if cycles and ref_cycles else "n/a"
        if op in DATA_DEPENDENT and cycles:
            ratio += f" (not a bound: {DATA_DEPENDENT[op]})"
        vmem_text = f"{vmem / 2**20:.2f} MiB" if vmem is not None else "n/a"
        print(
            f"| {op} | {shape} | {names} | {vmem_text} | {cycles or 'n/a'} | {ref_name} | "
            f"{ref_cycles or 'n/a'} | {ratio} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
