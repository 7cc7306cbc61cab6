"""The benchmark scripts run here (at their small CPU sizes) and print their tables."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (["bench_temperature_softmax.py"], ("# temperature softmax, ", "tops GB/s", "two pass")),
        (["bench_temperature_softmax.py", "--sweep"], ("single ms",)),
        (["bench_topk.py"], ("# top-k, bf16, ", "torch ms", "termination statistics", "max depth")),
        (
            ["bench_simple_gla.py"],
            (
                "# simple GLA forward, bf16",
                "tops ms",
                "minimum MB",
                "ratio",
                "# simple GLA forward + backward, bf16",
                "tops fwd+bwd ms",
                "fla peak MB",
                "# Pallas TPU fused backward kernel",
                "recomputed B",
            ),
        ),
        (["bench_sampling.py"], ("# sampling, bf16, top_k 64", "arbitrary ms", "flashinfer ms")),
    ],
    ids=["softmax", "softmax-sweep", "topk", "simple_gla", "sampling"],
)
def test_benchmark_prints_its_tables(script, expected):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script[0]), *script[1:]],
        capture_output=True,
        text=True,
        check=True,
    )
    for text in expected:
        assert text in done.stdout, text
