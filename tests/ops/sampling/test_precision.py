"""Rules 1-3 on every registered sampling case: the tokens, the validity mask and every
debug array must equal the reference exactly (tolerance 0, ε = the fraction of
mismatching elements), and the quantised probabilities must stay within the
quantisation's error budget of the float64 distribution (derived in
``tops/precision/cases/sampling.py``)."""

from tops.precision.testing import precision_tests

test_rules_1_and_3, test_rule2_tpu_vs_gpu = precision_tests("sampling")
