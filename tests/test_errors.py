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
    # under the user's own jit, the end of the debug block re-raises the ppl error itself
    with raises(ppl.ParameterError, "'x'", "scale") as info:
        with ppl.debug():
            jax.block_until_ready(jax.jit(lambda s: scaled.simulate(KEY, s).score)(-1.0))
    assert str(info.value).startswith("invalid parameter scale for normal at address 'x'")
    # without debug mode traced values are not checked (no host callbacks in compiled code)
    assert scaled.simulate(KEY, 1.0).score.shape == ()


def test_non_finite_log_density_under_debug():
    @gen
    def m():
        ppl.normal(0.0, 1.0) @ "z"
        return ppl.half_normal(1.0) @ "x"

    with ppl.debug():
        with raises(ppl.NonFiniteError, "'z'", "NaN"):  # NaN is always an error
            m.assess(ChoiceMap({"z": jnp.nan, "x": 1.0}))
        # -inf at a given value is a zero likelihood (here: outside the support), not an error
        lp, _ = m.assess(ChoiceMap({"z": 0.0, "x": -1.0}))
        assert float(lp) == -float("inf")


@gen
def _bounded():
    x = ppl.normal(0.0, 1.0) @ "x"
    return ppl.uniform(x - 1.0, x + 1.0) @ "y"  # zero likelihood unless |y - x| < 1


def test_debug_mode_allows_dead_particles_and_reports_all_dead():
    from inference import importance, smc

    with ppl.debug():
        ps = importance.sample(KEY, _bounded, (), ChoiceMap({"y": 1.5}), 100)
        dead = float(jnp.mean(jnp.isneginf(ps.log_weights)))
        assert 0.3 < dead < 0.95 and bool(jnp.isfinite(ps.log_marginal_likelihood()))
        ps = smc.init(KEY, _bounded, (), ChoiceMap({"y": 1.5}), 100)
        assert bool(jnp.all(jnp.isfinite(smc.resample(KEY, ps).log_weights)))  # survivors resampled
        with raises(smc.AllParticlesDeadError, "every particle"):
            smc.resample(KEY, smc.init(KEY, _bounded, (), ChoiceMap({"y": 50.0}), 100))


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


# ------------------------------------------------------------------------------ stale programs
_LOOP_SRC = """
import jax, ppl
draws = []
for s in (1.0, 100.0):
    @ppl.gen
    def f():
        return ppl.normal(0.0, s) @ "x"
    draws.append(float(f.simulate(jax.random.key(0)).retval))
"""

_REDEFINE_SRC = """
import jax, ppl
scale = 1.0
@ppl.gen
def f():
    return ppl.normal(0.0, scale) @ "x"
a = float(f.simulate(jax.random.key(0)).retval)
scale = 100.0
@ppl.gen
def f():
    return ppl.normal(0.0, scale) @ "x"
b = float(f.simulate(jax.random.key(0)).retval)
"""


def test_gen_defined_in_a_module_level_loop_never_reuses_an_earlier_program():
    ns: dict = {}
    exec(compile(_LOOP_SRC, "<loop_module>", "exec"), ns)
    a, b = ns["draws"]
    assert a != 0.0 and abs(b / a - 100.0) < 1e-3  # same key: the second draw is 100 x the first


def test_gen_redefined_after_changing_a_global_gets_its_own_program():
    ns: dict = {}
    exec(compile(_REDEFINE_SRC, "<redefine_module>", "exec"), ns)
    assert ns["a"] != 0.0 and abs(ns["b"] / ns["a"] - 100.0) < 1e-3


def test_helper_defined_inside_a_model_keeps_one_program():
    from ppl.core import _staged_runner

    def make():
        @gen
        def helper(m):
            return ppl.normal(m, 1.0) @ "z"

        return helper

    assert make() == make() and hash(make()) == hash(make())

    @gen
    def outer_model(mu):
        helper = make()
        c = ppl.flip(0.5) @ "c"
        a = helper(mu) @ "h"
        return ppl.cond(c, helper, helper)(a) @ "br"

    tr = outer_model.simulate(KEY, 0.0)
    outer_model.update(KEY, tr, ChoiceMap({("h", "z"): 1.0}), 0.0)  # the trace's helper == the new one
    n = _staged_runner._cache_size()
    outer_model.simulate(KEY, 1.0)
    assert _staged_runner._cache_size() == n


# ------------------------------------------------------------------------------ discrete values
@gen
def _coin():
    return ppl.flip(0.5) @ "c"


def test_probability_given_at_a_discrete_site_raises():
    assert _coin.simulate(KEY).retval.dtype == jnp.int32  # flip samples int32 0/1
    for _ in range(2):  # also when the compiled program is reused
        with raises(ppl.ShapeError, "'c'", "non-integer", "0.5"):
            _coin.generate(KEY, ChoiceMap({"c": 0.5}))
    with raises(ppl.ShapeError, "'c'"):
        _coin.assess(ChoiceMap({"c": 0.3}))
    with raises(ppl.ShapeError, "'c'"):
        _coin.update(KEY, _coin.simulate(KEY), ChoiceMap({"c": 0.3}))
    _, w = _coin.generate(KEY, ChoiceMap({"c": 1.0}))  # whole floats are fine
    assert abs(float(w) - float(jnp.log(0.5))) < 1e-6

    @gen
    def coins():
        return ppl.flip(jnp.full(3, 0.5)) @ "c"

    masked = ppl.Masked(jnp.array([1.0, 0.5, 0.0]), jnp.array([True, False, True]))
    coins.generate(KEY, ChoiceMap({"c": masked}))  # the masked-out 0.5 is never used
    with raises(ppl.ShapeError, "'c'"):
        coins.generate(KEY, ChoiceMap({"c": ppl.Masked(masked.value, jnp.ones(3, bool))}))


# ------------------------------------------------------------------------------ constant parameters
_BAD_CONSTANTS = {
    "negative_scale": (lambda: ppl.normal(0.0, jnp.array(-1.0)) @ "x", "scale"),
    "derived_constant": (lambda: ppl.normal(0.0, jnp.asarray(-1.0) * 2 + jnp.zeros(3)) @ "x", "scale"),
    "probs_not_simplex": (lambda: ppl.categorical(jnp.array([0.5, 0.7])) @ "x", "probs"),
    "nan_logits": (lambda: ppl.categorical(logits=jnp.array([0.5, jnp.nan])) @ "x", "logits"),
    "not_positive_definite": (
        lambda: ppl.mv_normal(jnp.zeros(2), jnp.array([[1.0, 2.0], [2.0, 1.0]])) @ "x", "positive definite"),
    "uniform_low_above_high": (lambda: ppl.uniform(1.0, 0.0) @ "x", "low must be less than high"),
}


@pytest.mark.parametrize("case", sorted(_BAD_CONSTANTS))
def test_invalid_constant_parameters_raise_at_trace_time(case):
    body, fragment = _BAD_CONSTANTS[case]
    with raises(ppl.ParameterError, "'x'", fragment):
        gen(body).simulate(KEY)


def test_valid_constants_and_traced_parameters():
    @gen
    def ok():
        ppl.categorical(logits=jnp.array([0.0, -jnp.inf])) @ "c"  # -inf rules a category out
        ppl.mv_normal(jnp.zeros(2), jnp.eye(2)) @ "v"
        return ppl.uniform(0.0, 1.0) @ "u"

    assert bool(jnp.isfinite(ok.simulate(KEY).score))

    @gen
    def box(lo, hi):
        return ppl.uniform(lo, hi) @ "u"

    assert box.simulate(KEY, 1.0, 0.0).score.shape == ()  # traced: unchecked outside debug mode
    with ppl.debug(), raises(ppl.ParameterError, "'u'", "low must be less than high"):
        box.simulate(KEY, 1.0, 0.0)


# ------------------------------------------------------------------------------ selections, estimators
@gen
def _branchy():
    c = ppl.flip(0.5) @ "c"
    return ppl.cond(c, model, outer)(XS) @ "br"


def test_regenerate_with_a_misspelled_selection_raises():
    tr = _branchy.simulate(KEY)
    _branchy.regenerate(KEY, tr, ppl.select(("br", "inner", "a")))
    for sel in (ppl.select("c"), ppl.select("br"), ppl.select(("br", "a")), ppl.select(("br", "inner", "a")),
                ~ppl.select("c"), ppl.select_all(), ppl.select_none(), ppl.select("c") | ppl.select(("br", "ys"))):
        # untaken-branch addresses count as present (checked at trace time: no need to compile)
        jax.eval_shape(lambda t, sel=sel: _branchy.regenerate(KEY, t, sel)[1], tr)
    with raises(ppl.AddressError, "'typo'", "'c'", "spelling"):
        _branchy.regenerate(KEY, tr, ppl.select("typo"))
    with raises(ppl.AddressError, "'br' / 'zz'"):
        _branchy.regenerate(KEY, tr, ~ppl.select(("br", "zz")))
    with raises(ppl.AddressError, "'typo'"):
        jax.jit(lambda t: _branchy.regenerate(KEY, t, ppl.select("typo"))[1])(tr)


def test_with_estimators_misspelled_address_raises():
    from inference import vi

    @gen
    def guide(p):
        return ppl.flip(p) @ "b"

    g = vi.with_estimators(guide, {"typo": vi.enum})

    @vi.expectation
    def f(key, p):
        return g.simulate(key, p).retval * 1.0

    with raises(ppl.ModelError, "'typo'", "with_estimators", "'b'"):
        f.estimate(KEY, 0.3)


# ------------------------------------------------------------------------------ CLI
def test_cli_unknown_demo_section_and_version(capsys):
    from inference.cli import main

    assert main(["demo", "--only", "foo"]) != 0
    err = capsys.readouterr().err
    assert "'foo'" in err and all(name in err for name in ("modeling", "smc", "mcmc", "vi"))
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and ppl.__version__ in capsys.readouterr().out


# ------------------------------------------------------------------------------ newcomer slips
def test_call_without_address_used_as_a_value():
    for body in (lambda: ppl.normal(0.0, 1.0) * 2.0,
                 lambda: jnp.exp(ppl.normal(0.0, 1.0)),
                 lambda: ppl.normal(ppl.normal(0.0, 1.0), 1.0) @ "y",
                 lambda: ppl.normal(0.0, 1.0)):  # returned from the model
        with raises(ppl.ModelError, "normal(...)", '@ "'):
            gen(body).simulate(KEY)


def test_model_args_not_a_tuple():
    from inference import importance, mcmc

    obs = ChoiceMap({"ys": jnp.zeros(3)})
    with raises(ppl.ArgumentError, "importance.sample", "args", "tuple"):
        importance.sample(KEY, model, 3, obs, 10)
    with raises(ppl.ArgumentError, "mcmc.init_chains", "args"):
        mcmc.init_chains(KEY, model, 5, obs)
    with raises(ppl.ArgumentError, "observations"):  # arguments and observations swapped
        importance.sample(KEY, model, obs, (XS,), 10)
    assert importance.sample(KEY, model, [XS], obs, 10).log_weights.shape == (10,)  # a list is fine


def test_python_list_observations_become_arrays():
    _, w_list = model.generate(KEY, ChoiceMap({"ys": [1.0, 2.0, 3.0]}), XS)
    _, w_arr = model.generate(KEY, ChoiceMap({"ys": jnp.array([1.0, 2.0, 3.0])}), XS)
    assert float(w_list) == float(w_arr)
    stepped = ppl.scan(rw_step, length=3)
    w = jax.jit(lambda o: stepped.generate(KEY, o, 0.0, None)[1])(ChoiceMap({"c": [0.1, 0.2, 0.3]}))
    assert bool(jnp.isfinite(w))
    with raises(ppl.ShapeError, "'ys'", "rectangular"):
        model.generate(KEY, ChoiceMap({"ys": [1.0, [2.0, 3.0]]}), XS)


# ------------------------------------------------------------------------------ error catalog
def _catalog():
    from inference import importance, mcmc, vi

    @gen
    def scaled(s):
        return ppl.normal(0.0, s) @ "x"

    @gen
    def guide(p):
        return ppl.flip(p) @ "b"

    typo_guide = vi.with_estimators(guide, {"typo": vi.enum})
    estimate = vi.expectation(lambda key, p: typo_guide.simulate(key, p).retval * 1.0)
    obs = ChoiceMap({"ys": jnp.zeros(3)})

    def user_jit_debug():
        with ppl.debug():
            jax.block_until_ready(jax.jit(lambda s: scaled.simulate(KEY, s).score)(-1.0))

    def nan_density():
        with ppl.debug():
            gen(lambda: ppl.normal(0.0, 1.0) @ "x").assess(ChoiceMap({"x": jnp.nan}))

    def all_dead():
        from inference import smc

        with ppl.debug():
            smc.resample(KEY, smc.init(KEY, _bounded, (), ChoiceMap({"y": 50.0}), 100))

    @gen
    def left():
        return ppl.normal(0.0, 1.0) @ "x"

    @gen
    def right():
        return ppl.normal(1.0, 1.0) @ "x"

    @gen
    def three_way():
        i = ppl.categorical(probs=jnp.array([0.2, 0.3, 0.5])) @ "i"
        return ppl.switch(i, left, right)() @ "br"

    @gen
    def bad_mix():
        return ppl.mix(jnp.zeros(3), left, right)() @ "m"

    def traced_index_debug():
        with ppl.debug():
            three_way.generate(KEY, ChoiceMap({"i": 2}))

    table = [
        ("switch index out of range (constant)", ppl.ModelError, ("out of range", "2 branches"),
         lambda: ppl.switch(7, left, right)),
        ("switch index out of range (traced, debug)", ppl.ModelError, ("'br'", "out of range"), traced_index_debug),
        ("mix logits count differs from components", ppl.ShapeError, ("'m'", "one logit per component"),
         lambda: bad_mix.simulate(KEY)),
        ("zero particles", ppl.ModelError, ("n_particles", "positive integer"),
         lambda: importance.sample(KEY, model, (XS,), obs, 0)),
        ("negative particles", ppl.ModelError, ("n_particles", "positive integer"),
         lambda: importance.sample(KEY, model, (XS,), obs, -5)),
        ("probability at a discrete site", ppl.ShapeError, ("'c'", "non-integer"),
         lambda: _coin.generate(KEY, ChoiceMap({"c": 0.5}))),
        ("non-rectangular list observation", ppl.ShapeError, ("'ys'", "rectangular"),
         lambda: model.generate(KEY, ChoiceMap({"ys": [1.0, [2.0]]}), XS)),
        ("misspelled regenerate selection", ppl.AddressError, ("'typo'", "regenerate"),
         lambda: model.regenerate(KEY, model.simulate(KEY, XS), ppl.select("typo"), XS)),
        ("misspelled with_estimators address", ppl.ModelError, ("'typo'", "with_estimators"),
         lambda: estimate.estimate(KEY, 0.3)),
        ("call without @ used as a value", ppl.ModelError, ("normal(...)", '@ "'),
         lambda: gen(lambda: ppl.normal(0.0, 1.0) + 1.0).simulate(KEY)),
        ("args not a tuple (importance)", ppl.ArgumentError, ("importance.sample", "args"),
         lambda: importance.sample(KEY, model, 3, obs, 10)),
        ("args not a tuple (mcmc)", ppl.ArgumentError, ("mcmc.init_chains", "args"),
         lambda: mcmc.init_chains(KEY, model, 5, obs)),
        ("debug check inside user jit", ppl.ParameterError, ("'x'", "scale"), user_jit_debug),
        ("NaN log density (debug)", ppl.NonFiniteError, ("'x'", "NaN"), nan_density),
        ("all particles dead (debug)", ppl.NonFiniteError, ("smc.resample", "every particle"), all_dead),
    ]
    for case, (body, fragment) in sorted(_BAD_CONSTANTS.items()):
        table.append((f"constant parameter: {case}", ppl.ParameterError, ("'x'", fragment),
                      lambda body=body: gen(body).simulate(KEY)))
    return table


_CATALOG_NAMES = [row[0] for row in _catalog()]


@pytest.mark.parametrize("name", _CATALOG_NAMES)
def test_error_catalog(name):
    """Every error case of docs/modeling.md's error catalog: a ModelError subclass naming the site/argument."""
    _, exc, fragments, fn = next(row for row in _catalog() if row[0] == name)
    assert issubclass(exc, ppl.ModelError)
    with raises(exc, *fragments):
        fn()
