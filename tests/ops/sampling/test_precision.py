"""Rules 1-3 on every registered sampling case: the tokens, the validity mask and every
debug array must equal the reference exactly (tolerance 0, ε = the fraction of
mismatching elements), and the quantised probabilities must stay within the
quantisation's error budget of the float64 distribution (derived in
``tops/precision/cases/sampling.py``)."""

import pytest

from tops.precision.testing import case_params, check_rule2, check_rules_1_and_3

OP = "sampling"


@pytest.mark.parametrize("case", case_params(OP))
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_rules_1_and_3(backend, case, baseline_ledger):
    check_rules_1_and_3(OP, case, backend, baseline_ledger)


@pytest.mark.parametrize("case", case_params(OP))
def test_rule2_tpu_vs_gpu(case):
    check_rule2(OP, case)
