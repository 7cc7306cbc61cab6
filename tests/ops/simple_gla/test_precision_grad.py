"""Rules 1-3 of the precision contract on every registered simple GLA backward case: the
gradients ``dq, dk, dv`` and, where the inputs are present, ``dg, dg_gamma, dh0`` of
``sum(o * do) + sum(final_state * dht)`` (``jax.grad`` through the TPU custom VJP,
``loss.backward()`` through the GPU autograd function), against ``jax.vjp`` of the float64
step recurrence.

Tolerance, derived in ``tops/precision/cases/simple_gla_grad.py``: with
``base = 4 u_op + (C + K + V + ceil(L / C)) 2**-24`` (``u_op`` 2**-8 for bf16 operands,
2**-10 for tf32; ``L`` the longest sequence), ``ε <= u_out + base`` for ``dq, dk, dv``,
``2**-24 + base`` for ``dh0`` and ``dg`` (a reverse cumsum within the chunk only), and
``2**-24 + 4 base`` for ``dg_gamma`` (a random-sign sum over every token, which may cancel
to 1/4 of its random-walk size). Measured: ε_GPU <= 6.6e-3 (bf16 dq, dk, dv) and 1.5e-3
(f32); ε_TPU at the bf16 floor for bf16 dq, dk, dv and <= 3.5e-7 otherwise.
"""

from tops.precision.testing import precision_tests

test_rules_1_and_3, test_rule2_tpu_vs_gpu = precision_tests("simple_gla_grad")
