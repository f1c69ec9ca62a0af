import jax
import jax.numpy as jnp
import pytest

from benchmarks.profile_ops import by_kind, fused_computation, instruction_times
from benchmarks.timing import jax_call


def test_instruction_times_name_the_compiled_instructions():
    a = jnp.ones((64, 64))
    compiled = jax.jit(lambda x, y: jnp.tanh(x @ y) + 1.0).lower(a, a).compile()
    times = instruction_times(jax_call(compiled, a, a), repeats=2)
    dots = [name for name in times if name.startswith("dot")]
    assert dots and all(ms >= 0 for ms in times.values()), times
    assert sum(by_kind(times).values()) == pytest.approx(sum(times.values()))  # the same times, summed per kind
    assert f"%{dots[0]} = " in fused_computation(compiled.as_text(), dots[0])


def test_by_kind_and_fused_computation_read_instruction_names():
    assert by_kind({"dot.1": 1.0, "dot.12": 2.0, "multiply_fusion": 0.5}) == {"dot": 3.0, "multiply_fusion": 0.5}
    hlo = ("%f.1 (p: f32[2]) -> f32[2] {\n  ROOT %m = f32[2] multiply(%p, %p)\n}\n\n"
           "ENTRY %main {\n  %mul_fusion.3 = f32[2] fusion(%x), kind=kLoop, calls=%f.1\n}\n")
    text = fused_computation(hlo, "mul_fusion.3")
    assert text.startswith("%mul_fusion.3 = ") and "multiply(%p, %p)" in text
    assert fused_computation(hlo, "absent") == ""
