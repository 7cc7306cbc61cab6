"""Rules 1-3 of the precision contract on every registered temperature-softmax backward
case: the logits' gradient of ``sum(p * g)`` (``jax.vjp`` through the TPU custom VJP,
``backward`` through the GPU autograd function) against ``tops.cpu.temperature_softmax_vjp``.

Tolerance, derived in ``tops/precision/cases/temperature_softmax_grad.py``:
``ε <= u_out + (forward tolerance at V) + 4 * 2**-24``.
"""

import pytest

from tops.precision.testing import case_params, check_rule2, check_rules_1_and_3

OP = "temperature_softmax_grad"


@pytest.mark.parametrize("case", case_params(OP))
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_rules_1_and_3(backend, case, baseline_ledger):
    check_rules_1_and_3(OP, case, backend, baseline_ledger)


@pytest.mark.parametrize("case", case_params(OP))
def test_rule2_tpu_vs_gpu(case):
    check_rule2(OP, case)
