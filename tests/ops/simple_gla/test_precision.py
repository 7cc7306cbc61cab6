"""Rules 1-3 of the precision contract on every registered simple GLA forward case
(``o`` and, where requested, ``final_state``).

Tolerance, derived in ``tops/precision/cases/simple_gla.py``:
``ε <= u_out + 4 u_op + (C + K + ceil(T / C)) 2**-24``. ``u_out`` is the output's own
rounding (2**-9 for bf16 ``o``, 2**-24 for f32); ``4 u_op`` covers the about four
independently rounded matmul operands on every path of the GPU kernel (bf16 operands:
u_op = 2**-8; tf32 for f32 inputs: 2**-10); the last term is the worst-case float32
accumulation over the chunk (C), the key width (K) and the ceil(T / C) state updates, so
the bound grows with T and the chunk size. Measured: ε_GPU <= 8.2e-3 (bf16 o) and
1.5e-3 (f32 o); ε_TPU at the bf16 floor, <= 3.2e-7 for f32 outputs.
"""

from tops.precision.testing import precision_tests

test_rules_1_and_3, test_rule2_tpu_vs_gpu = precision_tests("simple_gla")
