"""Change propagation in ``update``/``regenerate`` (ppl.changes): which sites are kept, and that
keeping them never changes an answer.

- weights and new traces against Gen's definitions computed independently (``assess`` of the new
  and old choices, exact enumeration of a discrete model over every old/new assignment);
- the plan: sites whose parameters read a changed value (constrained, selected, a changed model
  argument, a nested call's changed return value) are revisited, the others kept;
- what cannot be analysed (a site inside ``jax.jit``, debug mode) falls back to revisiting all;
- the compiled update of one site of a long chain does not grow by a density per kept site.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl import ChoiceMap, gen, select
from ppl.changes import _read, _site_p, site_plan
from ppl.staging import inline


@gen
def chain5(mu, s):
    x0 = ppl.normal(mu, 1.0) @ "x0"
    x1 = ppl.normal(0.5 * x0, s) @ "x1"
    x2 = ppl.normal(x1, 1.0) @ "x2"
    x3 = ppl.normal(0.0, s) @ "x3"
    return ppl.normal(x2 + x3, 1.0) @ "x4"


def _assess(model, choices, *args):
    return float(model.assess(choices, *args)[0])


def _trace(seed=0):
    return chain5.simulate(jax.random.key(seed), 0.3, jnp.float32(2.0))


def test_plan_keeps_sites_whose_parameters_read_nothing_changed():
    tr = _trace()
    assert site_plan(chain5, tr.args, tr, "update", ChoiceMap({"x0": 0.5})).kept == {"x2", "x3", "x4"}
    assert site_plan(chain5, tr.args, tr, "update", ChoiceMap({"x2": 0.5})).kept == {"x0", "x1", "x2", "x3"} - {"x2"}
    # a new value for the scale argument: the sites reading it are revisited
    args = (tr.args[0], jnp.float32(3.0))
    assert site_plan(chain5, args, tr, "update", ChoiceMap.empty()).kept == {"x0", "x2", "x4"}
    # regenerate: the selected site draws a new value, its readers are rescored
    assert site_plan(chain5, tr.args, tr, "regenerate", select("x3")).kept == {"x0", "x1", "x2"}


@pytest.mark.parametrize("addr", ["x0", "x1", "x2", "x3", "x4"])
def test_update_equals_gen_definition(addr):
    tr = _trace()
    new, w, discard = chain5.update(jax.random.key(1), tr, ChoiceMap({addr: 0.7}), *tr.args)
    choices = {a: float(tr.choices[a]) for a in ("x0", "x1", "x2", "x3", "x4")}
    old_lp = _assess(chain5, ChoiceMap(choices), *tr.args)
    choices[addr] = 0.7
    new_lp = _assess(chain5, ChoiceMap(choices), *tr.args)
    np.testing.assert_allclose(float(w), new_lp - old_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(new.get_score()), new_lp, rtol=1e-6)
    for a in choices:  # every per-site score is the site's density under the new choices
        assert float(new.choices[a]) == pytest.approx(choices[a])
    assert float(discard[addr]) == float(tr.choices[addr])
    # kept sites: the old score, bit for bit
    kept = site_plan(chain5, tr.args, tr, "update", ChoiceMap({addr: 0.7})).kept
    assert kept
    for a in kept:
        assert np.asarray(new.get_scores()[a]) == np.asarray(tr.get_scores()[a])


def test_update_with_new_arguments_rescores_their_readers():
    tr = _trace()
    new, w, _ = chain5.update(jax.random.key(1), tr, ChoiceMap.empty(), 0.3, jnp.float32(0.5))
    choices = ChoiceMap({a: tr.choices[a] for a in ("x0", "x1", "x2", "x3", "x4")})
    want = _assess(chain5, choices, 0.3, 0.5) - _assess(chain5, choices, 0.3, 2.0)
    np.testing.assert_allclose(float(w), want, rtol=1e-5, atol=1e-5)
    # equal values passed as new arrays (not the trace's own): treated as changed, same answer
    new2, w2, _ = chain5.update(jax.random.key(1), tr, ChoiceMap.empty(), 0.3, jnp.float32(2.0))
    assert abs(float(w2)) < 1e-5


def test_regenerate_weight_is_the_prior_proposal_mh_ratio():
    tr = _trace()
    new, w, _ = chain5.regenerate(jax.random.key(3), tr, select("x1"), *tr.args)
    old_c = {a: float(tr.choices[a]) for a in ("x0", "x1", "x2", "x3", "x4")}
    new_c = {a: float(new.choices[a]) for a in old_c}
    assert new_c["x1"] != old_c["x1"] and all(new_c[a] == old_c[a] for a in old_c if a != "x1")
    sel_lp = lambda c: float(ppl.normal.assess(ChoiceMap.value(c["x1"]), 0.5 * c["x0"], 2.0)[0])  # noqa: E731
    want = (_assess(chain5, ChoiceMap(new_c), *tr.args) - sel_lp(new_c)) - (
        _assess(chain5, ChoiceMap(old_c), *tr.args) - sel_lp(old_c))
    np.testing.assert_allclose(float(w), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- exact enumeration, discrete model
@gen
def coins(p):
    a = ppl.flip(p) @ "a"
    b = ppl.flip(jnp.where(a, 0.8, 0.3)) @ "b"
    c = ppl.flip(0.6) @ "c"
    return ppl.flip(jnp.where(b, 0.9, 0.2) * jnp.where(c, 1.0, 0.5)) @ "d"


def _log_joint(p, a, b, c, d):
    pa = p if a else 1 - p
    qb = 0.8 if a else 0.3
    pb = qb if b else 1 - qb
    pc = 0.6 if c else 0.4
    qd = (0.9 if b else 0.2) * (1.0 if c else 0.5)
    pd = qd if d else 1 - qd
    return float(np.log(pa) + np.log(pb) + np.log(pc) + np.log(pd))


@pytest.mark.parametrize("addr", ["a", "b", "c", "d"])
def test_update_weights_by_exact_enumeration(addr):
    names = ("a", "b", "c", "d")
    update = jax.jit(lambda tr, v: coins.update(jax.random.key(0), tr, ChoiceMap({addr: v}), *tr.args))
    for bits in itertools.product([False, True], repeat=4):
        old = dict(zip(names, bits))
        tr, _ = coins.generate(jax.random.key(0), ChoiceMap(old), 0.35)
        for v in (False, True):
            new = dict(old, **{addr: v})
            ntr, w, _ = update(tr, jnp.asarray(v))
            want = _log_joint(0.35, **new) - _log_joint(0.35, **old)
            assert float(w) == pytest.approx(want, rel=1e-5, abs=1e-5)
            assert float(ntr.get_score()) == pytest.approx(_log_joint(0.35, **new), rel=1e-5)


# ------------------------------------------------------------- nested @gen calls
@gen
def inner(m):
    z = ppl.normal(m, 1.0) @ "z"
    w = ppl.normal(0.0, 1.0) @ "w"
    return z + w


@gen
def outer():
    m = ppl.normal(0.0, 1.0) @ "m"
    k = ppl.normal(0.0, 1.0) @ "k"
    s = inner(k) @ "in"
    return ppl.normal(s, 1.0) @ "y"


def test_nested_call_with_unchanged_arguments_propagates_inside():
    tr = outer.simulate(jax.random.key(0))
    plan = site_plan(outer, (), tr, "update", ChoiceMap({"m": 0.1}))
    assert plan.kept == {"k", "y"} and plan.same_args == {"in"}
    inner_tr = tr.get_subtrace("in")
    assert site_plan(inner, (tr.choices["k"],), inner_tr, "update", ChoiceMap.empty(), True).kept == {"z", "w"}
    # a constrained address inside the call: its return value changes, "y" is rescored
    plan = site_plan(outer, (), tr, "update", ChoiceMap({("in", "w"): 0.1}))
    assert plan.kept == {"m", "k"} and plan.same_args == {"in"}
    # the call's argument changes: the call is revisited with changed arguments
    plan = site_plan(outer, (), tr, "update", ChoiceMap({"k": 0.1}))
    assert plan.kept == {"m"} and plan.same_args == frozenset()


@pytest.mark.parametrize("addr", ["m", "k", ("in", "z"), ("in", "w"), "y"])
def test_nested_update_equals_gen_definition(addr):
    tr = outer.simulate(jax.random.key(4))
    paths = ["m", "k", ("in", "z"), ("in", "w"), "y"]
    old = {p: float(tr.choices[p]) for p in paths}
    new_tr, w, _ = outer.update(jax.random.key(1), tr, ChoiceMap({addr: -0.4}))
    new = {**old, addr: -0.4}
    want = _assess(outer, ChoiceMap(new)) - _assess(outer, ChoiceMap(old))
    np.testing.assert_allclose(float(w), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(new_tr.get_score()), _assess(outer, ChoiceMap(new)), rtol=1e-5)


# ------------------------------------------------------------- what falls back
def test_a_site_inside_a_nested_jaxpr_is_not_analysed():
    # the uses of such a site's value are not followed: no plan (every site revisited)
    def body(x):
        inner = jax.jit(lambda y: _site_p.bind(y, y, addr="a", n_params=1)[0])
        return _site_p.bind(inner(x), x, addr="b", n_params=1)

    jaxpr = jax.make_jaxpr(body)(1.0).jaxpr
    assert _read(jaxpr, 1, [("a", 0), ("b", 0)]) is None
    flat = jax.make_jaxpr(lambda x: _site_p.bind(x * 2.0, x, addr="b", n_params=1))(1.0).jaxpr
    deps = _read(flat, 1, [("b", 0)])
    assert deps.sites == (("b", 0, 1),)


@gen
def through_cond():
    x = ppl.normal(0.0, 1.0) @ "x"
    u = ppl.normal(0.0, 1.0) @ "u"
    m = jax.lax.cond(u > 0, lambda a: a * 2.0, lambda a: a - 1.0, x)
    return ppl.normal(m, 1.0) @ "y"


def test_dependence_through_nested_jaxprs_is_kept():
    tr = through_cond.simulate(jax.random.key(0))
    assert site_plan(through_cond, (), tr, "update", ChoiceMap({"x": 0.2})).kept == {"u"}
    assert site_plan(through_cond, (), tr, "update", ChoiceMap({"u": 0.2})).kept == {"x"}
    new, w, _ = through_cond.update(jax.random.key(1), tr, ChoiceMap({"u": -abs(float(tr.choices["u"])) - 0.1}))
    old = {a: float(tr.choices[a]) for a in "xuy"}
    new_c = {a: float(new.choices[a]) for a in "xuy"}
    want = _assess(through_cond, ChoiceMap(new_c)) - _assess(through_cond, ChoiceMap(old))
    np.testing.assert_allclose(float(w), want, rtol=1e-5, atol=1e-5)


def test_debug_mode_revisits_every_site():
    tr = _trace()
    with ppl.debug():
        assert site_plan(chain5, tr.args, tr, "update", ChoiceMap({"x0": 0.5})).kept == frozenset()


# ------------------------------------------------------------- what is compiled
def _chain(n):
    @gen
    def many():
        x = jnp.zeros(())
        for i in range(n):
            x = ppl.normal(0.9 * x, 1.0) @ f"x{i}"
        return x

    return many


def test_update_of_one_site_does_not_score_the_kept_ones():
    def n_eqns(n):
        m = _chain(n)
        tr = jax.eval_shape(lambda k: m.simulate(k), jax.random.key(0))
        tr = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), tr)
        with inline():
            jaxpr = jax.make_jaxpr(lambda t: m.update(jax.random.key(0), t, ChoiceMap({"x0": 0.5})))(tr)
        return len(jaxpr.jaxpr.eqns)

    per_site = (n_eqns(40) - n_eqns(20)) / 20
    # a kept site costs its parameter (dead code, removed by XLA) and one add to the score; a
    # rescored normal density is about ten more
    assert per_site <= 3, per_site


@gen
def scaled(k):  # k: a static (Python int) argument
    x = ppl.normal(0.0, 1.0 * k) @ "x"
    return ppl.normal(x, 1.0) @ "y"


@gen
def calls_scaled(k):
    s = ppl.normal(0.0, 1.0) @ "s"
    return scaled(k) @ "in", s


def test_a_changed_static_argument_revisits_every_site():
    tr = scaled.simulate(jax.random.key(0), 2)
    new, w, _ = scaled.update(jax.random.key(1), tr, ChoiceMap.empty(), 3)
    c = ChoiceMap({"x": tr.choices["x"], "y": tr.choices["y"]})
    np.testing.assert_allclose(float(w), _assess(scaled, c, 3) - _assess(scaled, c, 2), rtol=1e-5, atol=1e-6)
    tr = calls_scaled.simulate(jax.random.key(0), 2)
    new, w, _ = calls_scaled.update(jax.random.key(1), tr, ChoiceMap.empty(), 3)
    c = tr.choices
    np.testing.assert_allclose(float(w), _assess(calls_scaled, c, 3) - _assess(calls_scaled, c, 2), rtol=1e-5,
                               atol=1e-6)


@gen
def by_length(xs):
    z = ppl.normal(jnp.zeros(xs.shape[0]), 1.0) @ "z"  # reads only the argument's shape
    u = ppl.normal(0.0, 1.0) @ "u"
    return ppl.normal(jnp.sum(z * xs) + u, 1.0) @ "y"


@gen
def calls_by_length(xs):
    return by_length(xs) @ "in"


def test_an_argument_of_another_shape_revisits_every_site():
    tr = by_length.simulate(jax.random.key(0), jnp.ones(3))
    assert site_plan(by_length, (jnp.ones(3),), tr, "update", ChoiceMap.empty()).kept == {"z", "u"}
    assert site_plan(by_length, (jnp.ones(4),), tr, "update", ChoiceMap.empty()).kept == frozenset()
    # a nested trace keeps no arguments: without its parent's plan nothing is assumed unchanged
    inner_tr = calls_by_length.simulate(jax.random.key(0), jnp.ones(3)).get_subtrace("in")
    assert site_plan(by_length, (jnp.ones(4),), inner_tr, "update", ChoiceMap.empty()).kept == frozenset()
    assert site_plan(by_length, (jnp.ones(3),), inner_tr, "update", ChoiceMap.empty(), False).kept == {"z", "u"}


# ------------------------------------------------------------- planned == revisit-everything
def _random_model(seed):
    """Six normal sites, each reading a random subset of the earlier ones and maybe the argument."""
    rng = np.random.default_rng(seed)
    parents = [sorted(rng.choice(i, size=rng.integers(0, i + 1), replace=False).tolist()) if i else []
               for i in range(6)]
    reads_arg = rng.random(6) < 0.4

    @gen
    def model(theta):
        xs = []
        for i in range(6):
            loc = sum((0.5 * xs[j] for j in parents[i]), 0.0) + (theta if reads_arg[i] else 0.0)
            xs.append(ppl.normal(loc, 1.0 + 0.1 * i) @ f"x{i}")
        return xs[-1]

    return model


@pytest.mark.parametrize("seed", range(4))
def test_planned_edits_equal_revisiting_every_site(seed, monkeypatch):
    import ppl.tracing as tracing
    from ppl.changes import NO_PLAN

    model = _random_model(seed)
    tr = model.simulate(jax.random.key(seed), 0.4)
    rng = np.random.default_rng(100 + seed)
    cases = []
    for _ in range(4):
        addrs = [f"x{i}" for i in sorted(rng.choice(6, size=rng.integers(1, 3), replace=False))]
        cases.append(("update", ChoiceMap({a: float(rng.normal()) for a in addrs}), tr.args))
        cases.append(("update", ChoiceMap({a: float(rng.normal()) for a in addrs}), (jnp.float32(-0.3),)))
        cases.append(("regenerate", select(*addrs), tr.args))

    def run(mode, edits, args):
        f = model.update if mode == "update" else model.regenerate
        new, w, _ = f(jax.random.key(7), tr, edits, *args)
        return np.asarray(w), {a: (np.asarray(new.choices[a]), np.asarray(new.get_scores()[a]))
                               for a in new.choices.addresses()}

    planned = [run(*c) for c in cases]
    monkeypatch.setattr(tracing, "site_plan", lambda *a, **k: NO_PLAN)
    jax.clear_caches()  # the staged programs were traced with plans
    for (mode, edits, args), (w, sites) in zip(cases, planned):
        w_ref, sites_ref = run(mode, edits, args)
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-5)
        for a, (v, lp) in sites.items():
            np.testing.assert_array_equal(v, sites_ref[a][0])  # same values (same keys)
            np.testing.assert_allclose(lp, sites_ref[a][1], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------- interceptors that keep values
class _KeepOld(ppl.core.Interceptor):
    """Keeps the old value of every site it handles and reports it doubled in the discard."""

    keeps_values = True

    def __init__(self, paths):
        self.paths = frozenset(paths)
        self.seen = []

    def handles(self, path):
        return path in self.paths

    def observe(self, path, gf, d, value, old_value):
        self.seen.append(path)
        return old_value, 0.0, 2.0 * old_value


def test_keeps_values_interceptor_plan_visits_its_sites_and_keeps_their_readers():
    tr = _trace()
    c = ChoiceMap({"x0": 9.0, "x3": 9.0})
    with ppl.core.intercept(_KeepOld([("x0",), ("x3",)])) as icpt:
        plan = site_plan(chain5, tr.args, tr, "update", c)
        new, w, discard = chain5.update(jax.random.key(1), tr, c, *tr.args)
    # x0 and x3 are visited (the interceptor sees them) with their old densities; nothing changed
    assert plan.same_params == {"x0", "x3"} and plan.kept == {"x1", "x2", "x4"}
    assert set(icpt.seen) == {("x0",), ("x3",)}
    assert float(w) == 0.0
    for a in ("x0", "x1", "x2", "x3", "x4"):
        assert float(new.choices[a]) == float(tr.choices[a])
    np.testing.assert_allclose(float(new.get_score()), float(tr.get_score()), rtol=1e-6)
    assert float(discard["x0"]) == 2.0 * float(tr.choices["x0"])


def test_keeps_values_interceptor_does_not_hide_a_constraint_it_does_not_handle():
    # x1 is constrained but not handled: its new value is a change, so x2 and x4 are rescored
    tr = _trace(3)
    c = ChoiceMap({"x0": 9.0, "x1": 0.25})
    with ppl.core.intercept(_KeepOld([("x0",)])):
        plan = site_plan(chain5, tr.args, tr, "update", c)
        new, w, _ = chain5.update(jax.random.key(1), tr, c, *tr.args)
    assert plan.same_params == {"x0"} and plan.kept == {"x3", "x4"}  # x2 rescored, its value kept
    assert "x2" not in plan.kept and "x1" not in plan.kept
    choices = {a: float(tr.choices[a]) for a in ("x0", "x1", "x2", "x3", "x4")}
    want = _assess(chain5, ChoiceMap({**choices, "x1": 0.25}), *tr.args) - _assess(chain5, ChoiceMap(choices), *tr.args)
    np.testing.assert_allclose(float(w), want, rtol=1e-5, atol=1e-5)
    assert float(new.choices["x0"]) == choices["x0"] and float(new.choices["x1"]) == 0.25


def test_keeps_values_nested_call_and_a_changed_argument_rescore_their_sites():
    tr = outer.simulate(jax.random.key(2))
    paths = ["m", "k", ("in", "z"), ("in", "w"), "y"]
    old = {p: float(tr.choices[p]) for p in paths}
    # every site given to the interceptor: nothing changes, weight 0, the nested sites seen too
    c = ChoiceMap({p: 5.0 for p in paths})
    with ppl.core.intercept(_KeepOld([p if isinstance(p, tuple) else (p,) for p in paths])) as icpt:
        new, w, _ = outer.update(jax.random.key(1), tr, c)
    assert float(w) == 0.0 and len(icpt.seen) == 5
    assert {p: float(new.choices[p]) for p in paths} == old
    # an unhandled constrained site inside the nested call changes its return value: y rescored
    c = ChoiceMap({"m": 5.0, ("in", "w"): -0.4})
    with ppl.core.intercept(_KeepOld([("m",)])):
        new, w, _ = outer.update(jax.random.key(1), tr, c)
    want = _assess(outer, ChoiceMap({**old, ("in", "w"): -0.4})) - _assess(outer, ChoiceMap(old))
    np.testing.assert_allclose(float(w), want, rtol=1e-5, atol=1e-5)


def test_an_interceptor_that_may_change_values_turns_plans_off():
    class Replace(_KeepOld):
        keeps_values = False

        def observe(self, path, gf, d, value, old_value):
            return value, 0.0, old_value

    tr = _trace()
    with ppl.core.intercept(Replace([("x0",)])):
        assert site_plan(chain5, tr.args, tr, "update", ChoiceMap({"x0": 0.5})).kept == frozenset()
        new, w, _ = chain5.update(jax.random.key(1), tr, ChoiceMap({"x0": 0.5}), *tr.args)
    choices = {a: float(tr.choices[a]) for a in ("x0", "x1", "x2", "x3", "x4")}
    want = _assess(chain5, ChoiceMap({**choices, "x0": 0.5}), *tr.args) - _assess(chain5, ChoiceMap(choices), *tr.args)
    np.testing.assert_allclose(float(w), want, rtol=1e-5, atol=1e-5)


def test_unconstrained_read_scores_no_site():
    # gradient kernels read the current unconstrained values with an update under an interceptor
    # that keeps the values: no site's log density is computed (all kept or old), so the read's
    # program has no more equations than the sites' inverse transforms need
    from inference.mcmc.transforms import UnconstrainedView

    @gen
    def m(n):
        s = ppl.gamma(2.0, 1.0) @ "s"
        w = ppl.normal(jnp.zeros(n), s) @ "w"
        return ppl.bernoulli(logits=w) @ "y"

    def n_eqns(n):
        tr = m.simulate(jax.random.key(0), n)
        view = UnconstrainedView(m, (("s",), ("w",)))
        with inline():
            jaxpr = jax.make_jaxpr(view.read)(tr)
        return jaxpr, view.read(tr), tr

    jaxpr, u, tr = n_eqns(3)
    prims = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert "log1p" not in prims and "integer_pow" not in prims, prims  # no bernoulli, no normal density
    np.testing.assert_allclose(np.exp(u[("s",)]), tr.choices["s"], rtol=1e-6)
    np.testing.assert_array_equal(u[("w",)], tr.choices["w"])
