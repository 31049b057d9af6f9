"""Normal sites' log densities computed together (ppl.scores): same values as site by site."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
import ppl.densities
import ppl.scores
from ppl.scores import Deferred, ScoreSink, batched


@ppl.gen
def many(s):
    a = ppl.normal(0.0, 1.0) @ "a"
    b = ppl.normal(a, s) @ "b"
    c = ppl.normal(b, 2.0) @ "c"
    v = ppl.normal(jnp.zeros(3), s) @ "v"
    w = ppl.normal(v, 1.0) @ "w"
    g = ppl.gamma(2.0, 1.0) @ "g"
    return ppl.normal(a + c + jnp.sum(w), g) @ "y"


def _site_logps(ch, s):
    """Every site's log density, computed one site at a time with numpyro."""
    return {
        "a": nd.Normal(0.0, 1.0).log_prob(ch["a"]),
        "b": nd.Normal(ch["a"], s).log_prob(ch["b"]),
        "c": nd.Normal(ch["b"], 2.0).log_prob(ch["c"]),
        "v": jnp.sum(nd.Normal(jnp.zeros(3), s).log_prob(ch["v"])),
        "w": jnp.sum(nd.Normal(ch["v"], 1.0).log_prob(ch["w"])),
        "g": nd.Gamma(2.0, 1.0).log_prob(ch["g"]),
        "y": nd.Normal(ch["a"] + ch["c"] + jnp.sum(ch["w"]), ch["g"]).log_prob(ch["y"]),
    }


@pytest.fixture(params=["batched", "site by site"])
def mode(request):
    if request.param == "batched":
        with batched():
            yield request.param
    else:
        yield request.param


def test_scores_match_site_by_site_in_every_method(mode):
    s = 0.7
    tr = many.simulate(jax.random.key(0), s)
    ref = _site_logps(tr.choices, s)
    scores = tr.get_scores()
    for a, lp in ref.items():
        np.testing.assert_allclose(scores[a], lp, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tr.score, sum(ref.values()), rtol=1e-6)
    lp, _ = many.assess(tr.choices, s)
    np.testing.assert_allclose(lp, tr.score, rtol=1e-6)
    # generate: the weight is the constrained sites' density only
    obs = ppl.ChoiceMap({"b": tr.choices["b"], "w": tr.choices["w"], "y": tr.choices["y"]})
    tr2, w = many.generate(jax.random.key(1), obs, s)
    ref2 = _site_logps(tr2.choices, s)
    np.testing.assert_allclose(w, ref2["b"] + ref2["w"] + ref2["y"], rtol=1e-6)
    np.testing.assert_allclose(tr2.score, sum(ref2.values()), rtol=1e-6)
    # update: new argument and one new value; the weight is new score minus old
    tr3, w3, disc = many.update(jax.random.key(2), tr, ppl.ChoiceMap({"c": 0.25}), 1.3)
    ref3 = _site_logps(tr3.choices, 1.3)
    np.testing.assert_allclose(tr3.score, sum(ref3.values()), rtol=1e-6)
    np.testing.assert_allclose(w3, tr3.score - tr.score, rtol=1e-5, atol=1e-5)
    assert float(disc["c"]) == float(tr.choices["c"])
    # regenerate of one site
    tr4, w4, _ = many.regenerate(jax.random.key(3), tr, ppl.select("v"), s)
    ref4 = _site_logps(tr4.choices, s)
    np.testing.assert_allclose(tr4.score, sum(ref4.values()), rtol=1e-6)
    # MH-style weight: p(new)/p(old) over the unselected sites' changes only
    expect = sum(ref4[a] - ref[a] for a in ref if a != "v")
    np.testing.assert_allclose(w4, expect, rtol=1e-5, atol=1e-5)


def test_unchanged_update_weight_is_exactly_zero(mode):
    tr = many.simulate(jax.random.key(4), 0.5)
    _, w, _ = many.update(jax.random.key(5), tr, ppl.ChoiceMap.empty(), 0.5)
    assert float(w) == 0.0
    _, w, _ = many.update(jax.random.key(5), tr, ppl.ChoiceMap({"a": tr.choices["a"]}), 0.5)
    assert float(w) == 0.0


def test_value_outside_support_and_gradients(mode):
    @ppl.gen
    def m():
        xs = [ppl.normal(0.0, 1.0) @ f"x{i}" for i in range(4)]
        return xs

    ch = ppl.ChoiceMap({f"x{i}": float(i) for i in range(4)})
    lp, _ = m.assess(ch)
    np.testing.assert_allclose(lp, jnp.sum(nd.Normal(0.0, 1.0).log_prob(jnp.arange(4.0))), rtol=1e-6)
    bad = ppl.ChoiceMap({f"x{i}": (jnp.inf if i == 2 else 0.0) for i in range(4)})
    assert float(m.assess(bad)[0]) == -np.inf

    def f(x):
        return m.assess(ppl.ChoiceMap({f"x{i}": x[i] for i in range(4)}))[0]

    x = jnp.array([0.3, -1.0, 2.0, 0.5])
    np.testing.assert_allclose(jax.grad(f)(x), -x, rtol=1e-6)


def _count(jaxpr, name):
    n = 0
    for e in jaxpr.eqns:
        n += e.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            n += _count(sub, name)
    return n


def test_sites_are_scored_in_one_call():
    @ppl.gen
    def m(s):
        return [ppl.normal(0.0, s) @ f"x{i}" for i in range(20)]

    ch = ppl.ChoiceMap({f"x{i}": 0.1 * i for i in range(20)})
    with batched():
        jaxpr = jax.make_jaxpr(lambda s: m.assess(ch, s)[0])(1.5)
    logs = _count(jaxpr.jaxpr, "log")
    assert 1 <= logs <= 2, logs  # one normalizer for the 20 sites, not 20
    @ppl.gen
    def m2(s):  # a new model (the staged program of m is cached)
        return [ppl.normal(0.0, s) @ f"x{i}" for i in range(20)]

    plain = jax.make_jaxpr(lambda s: m2.assess(ch, s)[0])(1.5)  # outside batched(): site by site
    assert _count(plain.jaxpr, "log") >= 20
    np.testing.assert_allclose(jax.jit(lambda s: m.assess(ch, s)[0])(1.5),
                               jnp.sum(nd.Normal(0.0, 1.5).log_prob(0.1 * jnp.arange(20.0))), rtol=1e-6)


def test_under_the_repeat_combinator(mode):
    rep = many.repeat(3)
    tr = rep.simulate(jax.random.key(6), 0.9)
    ch = tr.choices
    total = 0.0
    for i in range(3):
        sub = ppl.ChoiceMap({a: ch[a][i] for a in ["a", "b", "c", "v", "w", "g", "y"]})
        total += sum(_site_logps(sub, 0.9).values())
    np.testing.assert_allclose(tr.score, total, rtol=1e-5)


def test_debug_mode_still_names_the_site(mode):
    @ppl.gen
    def m():
        a = ppl.normal(0.0, 1.0) @ "a"
        return ppl.normal(a, 1.0) @ "b"

    with pytest.raises(ppl.ModelError, match="b"):
        with ppl.debug():
            m.assess(ppl.ChoiceMap({"a": 0.0, "b": jnp.nan}))


@pytest.mark.parametrize("min_group", [1, 4])
def test_deferred_arithmetic(monkeypatch, min_group):
    monkeypatch.setattr(ppl.scores, "MIN_GROUP", min_group)  # stacked, and one call per site
    sink = ScoreSink()
    x = sink.defer(nd.Normal(0.0, 1.0), jnp.float32(0.5))
    y = sink.defer(nd.Normal(1.0, 2.0), jnp.float32(0.0))
    assert isinstance(x, Deferred)
    expr = (x + 1.0) - jnp.float32(0.25) + (3.0 - y) - (-x)
    want = (2 * nd.Normal(0.0, 1.0).log_prob(0.5) + 1.0 - 0.25 + 3.0 - nd.Normal(1.0, 2.0).log_prob(0.0))
    np.testing.assert_allclose(sink.resolve(expr), want, rtol=1e-6)
    assert sink.defer(nd.Gamma(1.0, 1.0), jnp.float32(1.0)) is None


@pytest.mark.parametrize("validate", [True, False])
def test_log_density_is_numpyros_log_prob_bit_for_bit(validate):
    """ppl.densities.log_density (a normal's support check as one isfinite) equals numpyro's
    Normal.log_prob, values and gradients, for finite, infinite and NaN values, with numpyro's
    validation on (its default here) and off."""
    d_args = (jnp.array([0.5, -1.0, 2.0, 0.0]), jnp.array([2.0, 0.3, 1.0, 4.0]))
    xs = jnp.array([0.1, jnp.inf, -jnp.inf, jnp.nan])
    ys = jnp.array([0.1, -3.0, 7.5, 0.0])

    def ours(x, loc, scale):
        return ppl.densities.log_density(nd.Normal(loc, scale, validate_args=validate), x)

    def theirs(x, loc, scale):
        return nd.Normal(loc, scale, validate_args=validate).log_prob(x)

    for v in (xs, ys):
        a = jax.jit(ours)(v, *d_args)
        b = jax.jit(theirs)(v, *d_args)
        assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    g = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a)), argnums=(0, 1, 2)))(ys, *d_args)
    h = jax.jit(jax.grad(lambda *a: jnp.sum(theirs(*a)), argnums=(0, 1, 2)))(ys, *d_args)
    for x, y in zip(g, h):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # other families and concrete values: numpyro's own method
    pois = nd.Poisson(jnp.array([0.3, 2.0]))
    assert np.array_equal(np.asarray(jax.jit(lambda v: ppl.densities.log_density(pois, v))(jnp.array([1, 0]))),
                          np.asarray(pois.log_prob(jnp.array([1, 0]))))


@pytest.mark.parametrize("validate", [True, False])
def test_log_density_of_bernoulli_logits(validate):
    """The lean Bernoulli(logits) density equals numpyro's (same bits except the cancellation
    numpyro has at value 1 with positive logits, where it is within float32 rounding), exactly at
    infinite logits, with the same gradients; values outside {0, 1} have density zero when
    numpyro validates."""
    logits = jnp.array([-30.0, -2.5, -0.1, 0.0, 0.1, 2.5, 30.0])
    f_ours = jax.jit(lambda x, v: ppl.densities.log_density(nd.Bernoulli(logits=x, validate_args=validate), v))
    f_theirs = jax.jit(lambda x, v: nd.Bernoulli(logits=x, validate_args=validate).log_prob(v))
    for val in (0, 1):
        v = jnp.full(logits.shape, val, jnp.int32)
        a, b = np.asarray(f_ours(logits, v)), np.asarray(f_theirs(logits, v))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        exact = np.asarray(logits <= 0) if val == 1 else np.ones(logits.shape, bool)
        assert np.array_equal(a[exact], b[exact])
        ga = jax.grad(lambda x: jnp.sum(f_ours(x, v)))(logits)
        gb = jax.grad(lambda x: jnp.sum(f_theirs(x, v)))(logits)
        off_zero = np.asarray(logits != 0)  # numpyro's gradient at logit 0 is 0 or 1, not 1/2
        np.testing.assert_allclose(np.asarray(ga)[off_zero], np.asarray(gb)[off_zero], rtol=1e-6, atol=1e-7)
        # the exact gradient everywhere, logit 0 included: v - sigmoid(x)
        np.testing.assert_allclose(np.asarray(ga), val - np.asarray(jax.nn.sigmoid(logits)), rtol=1e-6, atol=1e-7)
    inf = jnp.array([-jnp.inf, -jnp.inf, jnp.inf, jnp.inf])
    got = np.asarray(f_ours(inf, jnp.array([0, 1, 0, 1])))
    assert got.tolist() == [0.0, -np.inf, -np.inf, 0.0]
    g = jax.grad(lambda x: jnp.sum(jnp.where(jnp.isfinite(f_ours(x, jnp.array([0, 1, 0, 1]))), f_ours(
        x, jnp.array([0, 1, 0, 1])), 0.0)))(inf)
    assert np.all(np.isfinite(np.asarray(g)))  # no NaN gradient at infinite logits
    out = np.asarray(f_ours(jnp.zeros(2), jnp.array([2, -1])))
    if validate:
        assert out.tolist() == [-np.inf, -np.inf]
    if validate:  # numpyro's warning about values outside the support is kept for concrete values
        with pytest.warns(UserWarning, match="Out-of-support"):
            ppl.densities.log_density(nd.Normal(0.0, 1.0, validate_args=True), jnp.array(jnp.nan))


def test_bernoulli_gradient_at_logit_zero_in_a_model():
    """A logistic model whose weights start at zero has every logit exactly 0: the gradient of
    assess there is X^T (y - 1/2) (numpyro's Bernoulli log_prob gives X^T (y - [y == 1]) there)."""
    X = jnp.array([[1.0, 2.0], [-0.5, 1.0], [0.3, -1.0]])
    y = jnp.array([1, 0, 0])

    @ppl.gen
    def model(X):
        w = ppl.normal(jnp.zeros(2), 1.0) @ "w"
        return ppl.bernoulli(logits=X @ w) @ "y"

    g = jax.grad(lambda w: model.assess(ppl.ChoiceMap({"w": w, "y": y}), X)[0])(jnp.zeros(2))
    np.testing.assert_allclose(np.asarray(g), np.asarray(X.T @ (y - 0.5)), rtol=1e-6)
    # and with the value concrete, the logits traced (a direct call)
    d = lambda w: nd.Bernoulli(logits=X @ w)  # noqa: E731
    g2 = jax.grad(lambda w: jnp.sum(ppl.densities.log_density(d(w), y)))(jnp.zeros(2))
    np.testing.assert_allclose(np.asarray(g2), np.asarray(X.T @ (y - 0.5)), rtol=1e-6)
    with pytest.warns(UserWarning, match="Out-of-support"):
        jax.grad(lambda w: jnp.sum(ppl.densities.log_density(d(w), jnp.array([2, 0, 1]))))(jnp.zeros(2))


def test_log_density_of_binomial_logits():
    """binomial(n, logits): numpyro's values to float rounding, and the exact gradient
    v - n sigmoid(x) everywhere, logit 0 included (numpyro's is off there)."""
    logits = jnp.array([-20.0, -1.5, 0.0, 0.0, 0.4, 3.0])
    n = jnp.array([3.0, 5.0, 4.0, 4.0, 1.0, 10.0])
    v = jnp.array([1.0, 0.0, 0.0, 4.0, 1.0, 7.0])
    ours = jax.jit(lambda x: ppl.densities.log_density(nd.Binomial(n, logits=x), v))
    theirs = jax.jit(lambda x: nd.Binomial(n, logits=x).log_prob(v))
    np.testing.assert_allclose(np.asarray(ours(logits)), np.asarray(theirs(logits)), rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda x: jnp.sum(ours(x)))(logits)
    np.testing.assert_allclose(np.asarray(g), np.asarray(v - n * jax.nn.sigmoid(logits)), rtol=1e-5, atol=1e-6)
    off_zero = np.asarray(logits != 0)
    h = jax.grad(lambda x: jnp.sum(theirs(x)))(logits)
    np.testing.assert_allclose(np.asarray(g)[off_zero], np.asarray(h)[off_zero], rtol=1e-5, atol=1e-6)
    # outside the support {0..n}: density zero
    out = jax.jit(lambda x: ppl.densities.log_density(nd.Binomial(3, logits=x), jnp.array([4.0, -1.0])))(
        jnp.zeros(2))
    assert np.asarray(out).tolist() == [-np.inf, -np.inf]

    @ppl.gen
    def model(n):
        x = ppl.normal(0.0, 1.0) @ "x"
        return ppl.binomial(n, logits=x) @ "k"

    gx = jax.grad(lambda x: model.assess(ppl.ChoiceMap({"x": x, "k": 2}), 6)[0])(0.0)
    assert abs(float(gx) - (2.0 - 6.0 * 0.5)) < 1e-6  # prior gradient at 0 is 0
