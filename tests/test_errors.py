"""Every modeling error is a ppl.ModelError whose message names the address and suggests a fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import ppl
from ppl import ChoiceMap, gen

KEY = jax.random.key(0)


@gen
def model(xs):
    a = ppl.normal(0.0, 1.0) @ "a"
    return ppl.normal(a * xs, 1.0) @ "ys"


@gen
def outer(xs):
    return model(xs) @ "inner"


@gen
def rw_step(c, _):
    c = ppl.normal(c, 1.0) @ "c"
    return c, c


XS = jnp.ones(3)


def raises(exc, *fragments):
    """Context manager asserting ``exc`` with every fragment in the message."""

    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.cm.__exit__(*a)
            msg = str(self.info.value)
            assert isinstance(self.info.value, ppl.ModelError), type(self.info.value)
            for f in fragments:
                assert f in msg, f"{f!r} not in {msg!r}"
            return out

    return _Ctx()


# ------------------------------------------------------------------------------ addresses
def test_reused_address():
    @gen
    def reuse():
        ppl.normal(0.0, 1.0) @ "x"
        ppl.normal(0.0, 1.0) @ "x"

    with raises(ppl.AddressError, "'x'", "used twice"):
        reuse.simulate(KEY)


def test_reused_address_nested_call_names_full_path():
    @gen
    def inner():
        ppl.normal(0.0, 1.0) @ "z"
        ppl.normal(0.0, 1.0) @ "z"

    @gen
    def top():
        return inner() @ "sub"

    with raises(ppl.AddressError, "'sub' / 'z'"):
        top.simulate(KEY)
    with raises(ppl.AddressError, "'sub' / 'z'"):
        jax.jit(top.simulate)(KEY)


def test_constraint_never_visited():
    with raises(ppl.AddressError, "'b'", "never visits"):
        model.generate(KEY, ChoiceMap({"b": 1.0}), XS)


def test_constraint_never_visited_nested():
    with raises(ppl.AddressError, "'inner' / 'b'", "never visits"):
        outer.generate(KEY, ChoiceMap({("inner", "b"): 1.0}), XS)
    with raises(ppl.AddressError, "'inner' / 'b'"):
        outer.update(KEY, outer.simulate(KEY, XS), ChoiceMap({("inner", "b"): 1.0}), XS)


def test_constraint_never_visited_inside_combinators():
    @gen
    def with_scan():
        return ppl.scan(rw_step, length=4)(0.0, None) @ "steps"

    with raises(ppl.AddressError, "'steps' / 'zz'"):
        with_scan.generate(KEY, ChoiceMap({("steps", "zz"): jnp.ones(4)}))

    @gen
    def with_vmap():
        return model.repeat(3)(XS) @ "copies"

    with raises(ppl.AddressError, "'copies' / 'q'"):
        with_vmap.generate(KEY, ChoiceMap({("copies", "q"): jnp.ones(3)}))

    @gen
    def with_cond():
        c = ppl.flip(0.5) @ "c"
        return ppl.cond(c, model, model)(1.0) @ "br"

    with raises(ppl.AddressError, "'br' / 'zz'"):
        with_cond.generate(KEY, ChoiceMap({("br", "zz"): 1.0}))

    @gen
    def with_mix():
        return ppl.mix(jnp.zeros(2), model, model)(1.0) @ "mx"

    with raises(ppl.AddressError, "'mx' / 'zz'"):
        with_mix.generate(KEY, ChoiceMap({("mx", "zz"): 1.0}))


def test_constraint_below_a_distribution_site():
    with raises(ppl.AddressError, "'a'"):
        model.generate(KEY, ChoiceMap({("a", "deeper"): 1.0}), XS)


def test_assess_missing_choice():
    with raises(ppl.AddressError, "'ys'", "assess"):
        model.assess(ChoiceMap({"a": 1.0}), XS)
    with raises(ppl.AddressError, "'inner' / 'ys'"):
        outer.assess(ChoiceMap({("inner", "a"): 1.0}), XS)
    with raises(ppl.AddressError, "'c'"):
        ppl.scan(rw_step, length=3).assess(ChoiceMap.empty(), 0.0, None)


# ------------------------------------------------------------------------------ values
def test_observation_n_by_1_at_n_site_is_not_broadcast():
    with raises(ppl.ShapeError, "'ys'", "(3, 1)", "(3,)", "reshape"):
        model.generate(KEY, ChoiceMap({"ys": jnp.ones((3, 1))}), XS)
    with raises(ppl.ShapeError, "'ys'", "(3, 1)"):
        model.assess(ChoiceMap({"a": 0.0, "ys": jnp.ones((3, 1))}), XS)
    tr = model.simulate(KEY, XS)
    with raises(ppl.ShapeError, "'ys'"):
        model.update(KEY, tr, ChoiceMap({"ys": jnp.ones((3, 1))}), XS)


def test_wrong_dtype():
    with raises(ppl.ShapeError, "'ys'", "dtype"):
        model.generate(KEY, ChoiceMap({"ys": jnp.ones(3, bool)}), XS)

    @gen
    def counts():
        return ppl.poisson(3.0) @ "n"

    with ppl.debug(), raises(ppl.ShapeError, "'n'", "integer"):  # traced value: run-time check
        counts.generate(KEY, ChoiceMap({"n": 1.5}))


def test_wrong_leading_axis_in_combinator():
    with raises(ppl.ShapeError, "'c'", "leading axis"):
        ppl.scan(rw_step, length=4).generate(KEY, ChoiceMap({"c": jnp.ones(3)}), 0.0, None)


# ------------------------------------------------------------------------------ parameters
def test_negative_scale_constant():
    @gen
    def bad():
        return ppl.normal(0.0, -1.0) @ "x"

    with raises(ppl.ParameterError, "'x'", "scale"):
        bad.simulate(KEY)


def test_negative_scale_traced_under_debug():
    @gen
    def scaled(s):
        return ppl.normal(0.0, s) @ "x"

    with ppl.debug():
        with raises(ppl.ParameterError, "'x'", "scale", "-1"):
            scaled.simulate(KEY, -1.0)
        # under the user's own jit the run-time error is XLA's, carrying the same message
        with pytest.raises(Exception, match="'x'"):
            jax.block_until_ready(jax.jit(lambda s: scaled.simulate(KEY, s).score)(-1.0))
    # without debug mode traced values are not checked (no host callbacks in compiled code)
    assert scaled.simulate(KEY, 1.0).score.shape == ()


def test_non_finite_log_density_under_debug():
    @gen
    def m():
        return ppl.half_normal(1.0) @ "x"

    with ppl.debug():
        with raises(ppl.NonFiniteError, "'x'"):
            m.assess(ChoiceMap({"x": -1.0}))


# ------------------------------------------------------------------------------ control flow
@gen
def python_if():
    a = ppl.normal(0.0, 1.0) @ "a"
    if a > 0:
        ppl.normal(0.0, 1.0) @ "b"
    return a


def test_python_if_on_sampled_value_eager():
    with raises(ppl.TracedControlFlowError, "'a'", "ppl.cond", "if a > 0"):
        python_if.simulate(KEY)


def test_python_if_on_sampled_value_under_jit_and_other_methods():
    with raises(ppl.TracedControlFlowError, "ppl.cond"):
        jax.jit(python_if.simulate)(KEY)
    with raises(ppl.TracedControlFlowError, "ppl.cond"):
        python_if.generate(KEY, ChoiceMap({"a": 1.0}))
    with raises(ppl.TracedControlFlowError, "ppl.cond"):
        python_if.assess(ChoiceMap({"a": 1.0, "b": 0.0}))


def test_python_int_conversion_of_sampled_value():
    @gen
    def loop():
        n = ppl.poisson(3.0) @ "n"
        for i in range(n):
            ppl.normal(0.0, 1.0) @ f"x{i}"

    with raises(ppl.TracedControlFlowError, "'n'"):
        loop.simulate(KEY)


# ------------------------------------------------------------------------------ not generative
def test_non_generative_function_with_at():
    def plain(x):
        return x

    @gen
    def m1():
        return plain(1.0) @ "z"

    with raises(ppl.NotGenerativeError, "'z'", "@ppl.gen"):
        m1.simulate(KEY)

    @gen
    def m2():
        return nd.Normal(0.0, 1.0) @ "z"

    with raises(ppl.NotGenerativeError, "'z'", "ppl.dist"):
        m2.simulate(KEY)

    @gen
    def m3():
        return ppl.normal @ "z"

    with raises(ppl.ModelError, "'z'"):
        m3.simulate(KEY)


def test_at_outside_a_model():
    with raises(ppl.ModelError, "'x'", "simulate"):
        ppl.normal(0.0, 1.0) @ "x"


def test_non_string_address():
    @gen
    def m():
        return ppl.normal(0.0, 1.0) @ 3

    with raises(ppl.AddressError, "3", "string"):
        m.simulate(KEY)


# ------------------------------------------------------------------------------ combinators
def test_scan_carry_shape_change():
    @gen
    def grow(c, _):
        v = ppl.normal(0.0, 1.0) @ "v"
        return jnp.stack([c, v]), v

    @gen
    def top():
        return ppl.scan(grow, length=3)(0.0, None) @ "steps"

    with raises(ppl.CarryShapeError, "'steps'", "carry", "(2,)"):
        top.simulate(KEY)


def test_scan_carry_dtype_change():
    @gen
    def to_int(c, _):
        v = ppl.poisson(2.0) @ "v"
        return v, v

    with raises(ppl.CarryShapeError, "carry", "float32", "int32"):
        ppl.scan(to_int, length=3).simulate(KEY, 0.0, None)


def test_scan_update_cannot_change_length():
    sc3 = ppl.scan(rw_step)
    tr = sc3.simulate(KEY, 0.0, jnp.zeros(3))
    with raises(ppl.ModelError, "number of steps"):
        sc3.update(KEY, tr, ChoiceMap.empty(), 0.0, jnp.zeros(4))


def test_switch_branches_with_different_return_shapes():
    @gen
    def f():
        return ppl.normal(0.0, 1.0) @ "a"

    @gen
    def g():
        return ppl.normal(jnp.zeros(2), 1.0) @ "a"

    @gen
    def m():
        c = ppl.flip(0.5) @ "c"
        return ppl.cond(c, f, g)() @ "br"

    with raises(ppl.ShapeError, "'br'", "branches return"):
        m.simulate(KEY)


def test_mix_reserved_component_address():
    @gen
    def bad():
        return ppl.normal(0.0, 1.0) @ "component"

    @gen
    def m():
        return ppl.mix(jnp.zeros(2), bad, bad)() @ "mx"

    with raises(ppl.AddressError, "'mx'", "component"):
        m.simulate(KEY)


def test_wrong_trace_for_update():
    tr = outer.simulate(KEY, XS)
    with raises(ppl.ModelError, "trace of outer"):
        model.update(KEY, tr, ChoiceMap.empty(), XS)
