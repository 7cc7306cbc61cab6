"""Rules 1-3 on every registered top-k case: both outputs must equal the reference
exactly (tolerance 0, ε = the fraction of mismatching elements)."""

from tops.precision.testing import precision_tests

test_rules_1_and_3, test_rule2_tpu_vs_gpu = precision_tests("topk")
