"""Rules 1-3 of the precision contract on every registered temperature-softmax case."""

from tops.precision.testing import precision_tests

test_rules_1_and_3, test_rule2_tpu_vs_gpu = precision_tests("temperature_softmax")
