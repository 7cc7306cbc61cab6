"""One verdict on every host: registered cases of every op, run in subprocesses under
settings that make this machine compute like another host, give the same output bytes,
the same ε (to 6 significant digits) and the same verdicts as under the default setting.

The settings vary what the interpret modes could inherit from a host: OpenBLAS's kernel
family (``OPENBLAS_CORETYPE``) and thread count (NumPy's matmul, once the Triton
interpreter's ``tl.dot``), NumPy's SIMD dispatch (``np.exp`` and friends), XLA:CPU's ISA
(the Pallas interpreter's dots and exponentials) and torch's CPU capability and thread
count (the torch wrappers' reductions), the number of CPUs the process may use (XLA's and
torch's thread pools) and which library the user imported first. Each value of each
factor occurs in at least one setting; a setting that this machine cannot run (SkylakeX
kernels without AVX-512) is skipped with the reason, so the summary shows it. The
subprocesses run two at a time.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tops.precision.testing import requires_gpu

ROOT = Path(__file__).resolve().parents[2]
# Both simple GLA cases of the AMD report (bf16, no gate: pure summation order), a gated
# f32 case (tf32 dots, exp forward and backward, the dg and d g_gamma reductions: its
# d g_gamma followed OpenBLAS's kernels), the softmax case whose rule 3 followed NumPy's
# exp, the f32 softmax case whose ε followed NumPy's AVX-512 exp in the reference (until
# tops.cpu.arith.exp), and the exact ops. About 25 s per setting on one core.
CASES = (
    "simple_gla/bfloat16_B2_T63_H4_K64_V64_C128_none_hT",
    "simple_gla_grad/bfloat16_B2_T63_H4_K64_V64_C128_none_h0",
    "simple_gla_grad/float32_B2_T63_H4_K64_V64_C64_g_gamma_hT",
    "temperature_softmax/bfloat16_B3_V4097_T1.0",
    "temperature_softmax/float32_B5_V1000_T1.0",
    "topk/float32_B3_V1000_k8",
    "sampling/mix_float16_B5_V127_bounded64",
)
NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"


@dataclass(frozen=True)
class Setting:
    """Environment variables, the CPUs the process may use (``taskset``) and a module
    imported before tops (the user's import order)."""

    env: dict[str, str] = field(default_factory=dict)
    cpus: str | None = None
    first_import: str | None = None


# The default has the host's OpenBLAS kernels and two threads everywhere; every other value
# of every factor occurs below, torch's capability and thread count in all four pairs.
SETTINGS = {
    "default": Setting(),
    "avx2-host-1-thread": Setting(
        {
            "OPENBLAS_CORETYPE": "Haswell",
            "OPENBLAS_NUM_THREADS": "1",
            "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",
            "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512,
            "ATEN_CPU_CAPABILITY": "avx2",
            "OMP_NUM_THREADS": "1",
        }
    ),
    "skylakex-torch-avx2-2-threads-torch-first": Setting(
        {
            "OPENBLAS_CORETYPE": "SkylakeX",
            "OPENBLAS_NUM_THREADS": "2",
            "ATEN_CPU_CAPABILITY": "avx2",
            "OMP_NUM_THREADS": "2",
        },
        first_import="torch",
    ),
    "zen-one-cpu-triton-first": Setting(
        {"OPENBLAS_CORETYPE": "Zen", "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512},
        cpus="0",
        first_import="triton",
    ),
}


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _unrunnable(setting: Setting) -> str | None:
    """Why this machine cannot imitate ``setting``, or None."""
    if setting.env.get("OPENBLAS_CORETYPE") == "SkylakeX" and "avx512f" not in _cpu_flags():
        return "OPENBLAS_CORETYPE=SkylakeX needs AVX-512, which this CPU lacks"
    if setting.cpus is not None and shutil.which("taskset") is None:
        return "taskset (util-linux) is not installed"
    return None


def _fingerprint(setting: Setting) -> dict[str, dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **setting.env}
    preamble = f"import {setting.first_import}; " if setting.first_import else ""
    command = [
        sys.executable,
        "-c",
        f"{preamble}import sys; from tops.precision import fingerprint; "
        "sys.exit(fingerprint.main(sys.argv[1:]))",
        *CASES,
    ]
    if setting.cpus is not None:
        command = ["taskset", "-c", setting.cpus, *command]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    return {record["key"]: record for record in records}


@functools.cache
def _all_fingerprints() -> dict[str, dict[str, dict] | str]:
    """Every runnable setting's records (or the reason it cannot run), two at a time."""
    runnable = {name: s for name, s in SETTINGS.items() if _unrunnable(s) is None}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_fingerprint, s) for name, s in runnable.items()}
        results = {name: future.result() for name, future in futures.items()}
    return {name: results.get(name) or _unrunnable(s) for name, s in SETTINGS.items()}


def _differences(base: dict[str, dict], other: dict[str, dict]) -> list[str]:
    problems = [f"{key}: missing" for key in base.keys() - other.keys()]
    for key, want in base.items():
        got = other.get(key)
        if got is None:
            continue
        for backend, digest in want["sha256"].items():
            if got["sha256"][backend] != digest:
                problems.append(
                    f"{key} on {backend}: output bytes differ "
                    f"(ε {want['eps'][backend]:.7g} -> {got['eps'][backend]:.7g})"
                )
            elif f"{got['eps'][backend]:.6g}" != f"{want['eps'][backend]:.6g}":
                problems.append(f"{key} on {backend}: ε {want['eps'][backend]!r} -> {got['eps']}")
        if got["inputs"] != want["inputs"]:
            problems.append(f"{key}: inputs differ")
        if got["verdicts"] != want["verdicts"]:
            problems.append(f"{key}: verdicts {want['verdicts']} -> {got['verdicts']}")
    return problems


@requires_gpu
@pytest.mark.xdist_group("reproducibility")
@pytest.mark.parametrize("name", [name for name in SETTINGS if name != "default"])
def test_outputs_and_verdicts_are_identical_on_every_host(name):
    results = _all_fingerprints()
    if isinstance(results[name], str):
        pytest.skip(results[name])
    base = results["default"]
    assert len(base) >= 2 * len(CASES)  # every case produced records
    problems = _differences(base, results[name])
    assert not problems, f"setting {name} {SETTINGS[name]}:\n" + "\n".join(problems)
