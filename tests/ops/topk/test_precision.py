"""Rules 1-3 on every registered top-k case: both outputs must equal the reference
exactly (tolerance 0, ε = the fraction of mismatching elements)."""

import pytest

from tops.precision.testing import case_params, check_rule2, check_rules_1_and_3

OP = "topk"


@pytest.mark.parametrize("case", case_params(OP))
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_rules_1_and_3(backend, case, baseline_ledger):
    check_rules_1_and_3(OP, case, backend, baseline_ledger)


@pytest.mark.parametrize("case", case_params(OP))
def test_rule2_tpu_vs_gpu(case):
    check_rule2(OP, case)
