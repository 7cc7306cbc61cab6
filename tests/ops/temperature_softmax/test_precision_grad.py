"""Rules 1-3 of the precision contract on every registered temperature-softmax backward
case: the logits' gradient of ``sum(p * g)`` (``jax.vjp`` through the TPU custom VJP,
``backward`` through the GPU autograd function) against ``tops.cpu.temperature_softmax_vjp``.

Tolerance, derived in ``tops/precision/cases/temperature_softmax_grad.py``:
``ε <= u_out + (forward tolerance at V) + 4 * 2**-24``.
"""

from tops.precision.testing import precision_tests

test_rules_1_and_3, test_rule2_tpu_vs_gpu = precision_tests("temperature_softmax_grad")
