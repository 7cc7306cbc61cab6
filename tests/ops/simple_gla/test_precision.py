"""Rules 1-3 of the precision contract on every registered simple GLA forward case
(``o`` and, where requested, ``final_state``)."""

import pytest

from tops.precision.testing import case_params, check_rule2, check_rules_1_and_3

OP = "simple_gla"


@pytest.mark.parametrize("case", case_params(OP))
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_rules_1_and_3(backend, case, baseline_ledger):
    check_rules_1_and_3(OP, case, backend, baseline_ledger)


@pytest.mark.parametrize("case", case_params(OP))
def test_rule2_tpu_vs_gpu(case):
    check_rule2(OP, case)
