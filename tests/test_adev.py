"""ADEV: unbiasedness of every gradient strategy against exact gradients (z-tests), variance
ordering, strategies mixing and nesting, and errors naming the site."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import vi
from ppl import ChoiceMap

N = 8000  # independent gradient estimates per z-test
Z = 4.5  # z-score tolerance (fixed seeds: deterministic)


def estimates(obj, params, *args, n=N, seed=0):
    ks = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: obj.grad_estimate(k, params, *args)))(ks)


def assert_unbiased(samples, exact, name=""):
    for k in exact:
        s = np.asarray(samples[k], np.float64)
        mean, se = s.mean(), s.std() / np.sqrt(len(s))
        tol = Z * se + 1e-5 * (1 + abs(exact[k]))
        assert abs(mean - exact[k]) <= tol, f"{name}[{k}]: mean {mean:.5f} exact {exact[k]:.5f} se {se:.5f}"


# ------------------------------------------------------------------------ Gaussian model/guide
X0 = 1.3


@ppl.gen
def gauss_model():
    z = ppl.normal(0.0, 1.0) @ "z"
    return ppl.normal(z, 1.0) @ "x"


@ppl.gen
def gauss_guide(p):
    return ppl.normal(p["mu"], jnp.exp(p["ls"])) @ "z"


def gauss_elbo(strategy):
    g = vi.with_estimators(gauss_guide, {"z": strategy}) if strategy is not None else gauss_guide

    @vi.expectation
    def elbo(key, p):
        q = g.simulate(key, p)
        lp, _ = gauss_model.assess(q.choices | ChoiceMap({"x": X0}))
        return lp - q.score

    return elbo


GP = {"mu": jnp.array(0.2), "ls": jnp.array(-0.3)}


def gauss_exact(p):
    s = float(jnp.exp(p["ls"]))
    return {"mu": X0 - 2 * float(p["mu"]), "ls": 1 - 2 * s**2}


def gauss_elbo_exact_value(p):
    mu, s = float(p["mu"]), float(jnp.exp(p["ls"]))
    return -np.log(2 * np.pi) - 0.5 * (mu**2 + s**2) - 0.5 * ((X0 - mu) ** 2 + s**2) + 0.5 * np.log(2 * np.pi * np.e * s**2)


GAUSS_STRATEGIES = {
    "default": None,
    "reparam": vi.reparam,
    "reinforce": vi.reinforce,
    "reinforce-mean": vi.reinforce(baseline="mean"),
    "reinforce-const": vi.reinforce(baseline=-2.5),
    "reinforce-callable": vi.reinforce(baseline=lambda p: -2.0 - p["mu"] ** 2),
    "mvd": vi.mvd,
}


_SHARED = {}


def shared_estimates(kind: str, name: str):
    """``estimates`` (N draws, seed 0) of the Gaussian (``kind="gauss"``) or Bernoulli ELBO's
    gradient with strategy ``name``, computed once per process: the unbiasedness tests and
    test_variance_ordering use the same draws (one compiled program per strategy)."""
    if (kind, name) not in _SHARED:
        if kind == "gauss":
            _SHARED[kind, name] = estimates(gauss_elbo(GAUSS_STRATEGIES[name]), GP)
        else:
            _SHARED[kind, name] = estimates(bern_elbo(BERN_STRATEGIES[name]), THETA)
    return _SHARED[kind, name]


@pytest.mark.parametrize("name", list(GAUSS_STRATEGIES))
def test_gaussian_unbiased(name):
    assert_unbiased(shared_estimates("gauss", name), gauss_exact(GP), name)


def test_gaussian_estimate_unbiased():
    obj = gauss_elbo(vi.reinforce)
    ks = jax.random.split(jax.random.key(5), N)
    vals = np.asarray(jax.jit(jax.vmap(lambda k: obj.estimate(k, GP)))(ks), np.float64)
    assert abs(vals.mean() - gauss_elbo_exact_value(GP)) < Z * vals.std() / np.sqrt(N)
    v, g = obj.value_and_grad_estimate(jax.random.key(3), GP)
    assert float(v) == float(obj.estimate(jax.random.key(3), GP))  # one pass, same value


# ------------------------------------------------------------------------ Bernoulli latent
XB = 0.7


@ppl.gen
def bern_model():
    b = ppl.flip(0.4) @ "b"
    return ppl.normal(2.0 * b - 1.0, 1.0) @ "x"


@ppl.gen
def bern_guide(theta):
    return ppl.bernoulli(logits=theta) @ "b"


def bern_elbo(strategy):
    g = vi.with_estimators(bern_guide, {"b": strategy}) if strategy is not None else bern_guide

    @vi.expectation
    def elbo(key, theta):
        q = g.simulate(key, theta)
        lp, _ = bern_model.assess(q.choices | ChoiceMap({"x": XB}))
        return lp - q.score

    return elbo


def bern_exact_elbo(theta):
    q1 = jax.nn.sigmoid(theta)
    total = 0.0
    for b, qb in ((1, q1), (0, 1 - q1)):
        lp = jnp.log(jnp.where(b, 0.4, 0.6)) + jax.scipy.stats.norm.logpdf(XB, 2.0 * b - 1.0, 1.0)
        total = total + qb * (lp - jnp.log(qb))
    return total


THETA = jnp.array(0.3)


BERN_STRATEGIES = {"default": None, "enum": vi.enum, "reinforce": vi.reinforce,
                   "reinforce-mean": vi.reinforce(baseline="mean"), "mvd": vi.mvd}


@pytest.mark.parametrize("name", list(BERN_STRATEGIES))
def test_bernoulli_unbiased(name):
    obj = bern_elbo(BERN_STRATEGIES[name])
    exact = {"t": float(jax.grad(bern_exact_elbo)(THETA))}
    g = shared_estimates("bern", name)
    assert_unbiased({"t": g}, exact, name)
    if name == "enum":  # exact sum: no variance at all
        assert float(jnp.std(g)) < 1e-5
        assert abs(float(obj.estimate(jax.random.key(0), THETA)) - float(bern_exact_elbo(THETA))) < 1e-5


# ------------------------------------------------------------------------ categorical
@ppl.gen
def cat_guide(logits):
    return ppl.categorical(logits=logits) @ "c"


VALUES = jnp.array([1.0, -2.0, 4.0])


@pytest.mark.parametrize("strategy", ["enum", "reinforce", "mvd"])
def test_categorical_unbiased(strategy):
    g = vi.with_estimators(cat_guide, {"c": getattr(vi, strategy)})

    @vi.expectation
    def f(key, logits):
        c = g.simulate(key, logits).retval
        return VALUES[c] ** 2

    logits = jnp.array([0.2, -0.5, 0.1])
    exact = jax.grad(lambda l: jnp.sum(jax.nn.softmax(l) * VALUES**2))(logits)
    g_ = estimates(f, logits)
    assert_unbiased({i: g_[:, i] for i in range(3)}, {i: float(exact[i]) for i in range(3)}, strategy)


# ------------------------------------------------------------------------ downstream dependence
@ppl.gen
def chain_guide(p):
    b = ppl.bernoulli(logits=p["a"]) @ "b"
    z = ppl.normal(p["m"] + 2.0 * b, jnp.exp(p["s"])) @ "z"  # the sampled b feeds z's parameters
    return b, z


def chain_exact(p):
    q1 = jax.nn.sigmoid(p["a"])
    s2 = jnp.exp(2 * p["s"])
    total = 0.0
    for b, qb in ((1.0, q1), (0.0, 1 - q1)):
        m = p["m"] + 2.0 * b
        total = total + qb * ((m - 1.0) ** 2 + s2 + b * m)  # E[(z - 1)^2 + b z | b]
    return total


CP = {"a": jnp.array(-0.2), "m": jnp.array(0.4), "s": jnp.array(-0.5)}


@pytest.mark.parametrize("b_strat,z_strat", [("reinforce", "reparam"), ("enum", "reparam"), ("mvd", "reparam"),
                                             ("enum", "mvd"), ("reinforce", "reinforce"), ("mvd", "reinforce")])
def test_sample_feeds_later_sample(b_strat, z_strat):
    g = vi.with_estimators(chain_guide, {"b": getattr(vi, b_strat), "z": getattr(vi, z_strat)})

    @vi.expectation
    def f(key, p):
        b, z = g.simulate(key, p).retval
        return (z - 1.0) ** 2 + b * z

    exact = {k: float(v) for k, v in jax.grad(chain_exact)(CP).items()}
    assert_unbiased(estimates(f, CP), exact, f"{b_strat}/{z_strat}")


def test_continuous_feeds_discrete_reinforce():
    @ppl.gen
    def guide(mu):
        z = ppl.normal(mu, 1.0) @ "z"
        b = ppl.bernoulli(logits=z) @ "b"
        return z, b

    @vi.expectation
    def f(key, mu):
        z, b = guide.simulate(key, mu).retval
        return 3.0 * b + z

    # E = E_z[3 sigmoid(z)] + mu; d/dmu = 3 E[sigmoid'(z)] + 1 (Gauss-Hermite quadrature)
    x, w = np.polynomial.hermite_e.hermegauss(80)
    mu = 0.3
    sig = 1 / (1 + np.exp(-(mu + x)))
    exact = 3 * np.sum(w * sig * (1 - sig)) / np.sqrt(2 * np.pi) + 1
    assert_unbiased({"g": estimates(f, jnp.array(mu))}, {"g": exact})


# ------------------------------------------------------------------------ composition
def test_strategies_mix_and_nest():
    """Two sites with different strategies in one guide; an expectation calling another."""

    @ppl.gen
    def g1(p):
        return ppl.bernoulli(logits=p["a"], estimator=vi.enum) @ "b"

    @ppl.gen
    def g2(p, b):
        return ppl.normal(p["m"] + 2.0 * b, jnp.exp(p["s"]), estimator=vi.mvd) @ "z"

    @vi.expectation
    def inner(key, p, b):
        z = g2.simulate(key, p, b).retval
        return (z - 1.0) ** 2 + b * z

    @vi.expectation
    def outer(key, p):
        k1, k2 = jax.random.split(key)
        b = g1.simulate(k1, p).retval
        return inner(k2, p, b)  # nested expectation: its site joins the outer estimator

    exact = {k: float(v) for k, v in jax.grad(chain_exact)(CP).items()}
    assert_unbiased(estimates(outer, CP), exact, "nested")
    # and the nested one is the same as estimate() of the inner inside the outer
    @vi.expectation
    def outer2(key, p):
        k1, k2 = jax.random.split(key)
        return inner.estimate(k2, p, g1.simulate(k1, p).retval)

    a, b = jax.jit(lambda k: (outer.grad_estimate(k, CP), outer2.grad_estimate(k, CP)))(jax.random.key(1))
    assert all(float(a[k]) == float(b[k]) for k in a)


@pytest.mark.statistical
def test_batched_site_enum_and_mvd():
    """Array-valued discrete sites: joint enumeration and per-element MVD."""

    @ppl.gen
    def guide(theta):
        return ppl.bernoulli(logits=theta) @ "bs"

    w = jnp.array([1.0, -2.0, 0.5])

    def f_of(strategy):
        g = vi.with_estimators(guide, {"bs": strategy})

        @vi.expectation
        def f(key, theta):
            bs = g.simulate(key, theta).retval
            return (jnp.sum(w * bs) - 0.3) ** 2

        return f

    def exact(theta):
        f = f_of(vi.enum)
        return f.estimate(jax.random.key(0), theta)

    theta = jnp.array([0.2, -0.4, 1.0])
    # enum is exact: compare with brute force
    q = jax.nn.sigmoid(theta)
    brute = 0.0
    import itertools
    for bits in itertools.product([0, 1], repeat=3):
        bits = jnp.array(bits, jnp.float32)
        brute += jnp.prod(jnp.where(bits == 1, q, 1 - q)) * (jnp.sum(w * bits) - 0.3) ** 2
    assert abs(float(exact(theta)) - float(brute)) < 1e-5
    g_exact = jax.grad(lambda t: jnp.sum(jnp.stack([
        jnp.prod(jnp.where(jnp.array(b) == 1, jax.nn.sigmoid(t), 1 - jax.nn.sigmoid(t))) * (jnp.sum(w * jnp.array(b, jnp.float32)) - 0.3) ** 2
        for b in itertools.product([0, 1], repeat=3)])))(theta)
    for strat in (vi.enum, vi.mvd, vi.reinforce):
        g = estimates(f_of(strat), theta, n=4000)
        assert_unbiased({i: g[:, i] for i in range(3)}, {i: float(g_exact[i]) for i in range(3)}, repr(strat))


# ------------------------------------------------------------------------ variance ordering
@pytest.mark.statistical
def test_variance_ordering():
    """On the unbiasedness tests' own draws (``shared_estimates``, N per strategy)."""
    var = lambda g: {k: float(jnp.var(v)) for k, v in g.items()}
    rep, rf, rf_mean, rf_const = (var(shared_estimates("gauss", n))
                                  for n in ("reparam", "reinforce", "reinforce-mean", "reinforce-const"))
    for k in rep:
        assert rep[k] < rf[k]
        assert rf_mean[k] < rf[k]
        assert rf_const[k] < rf[k]
    en, brf, brf_mean = (float(jnp.var(shared_estimates("bern", n))) for n in ("enum", "reinforce", "reinforce-mean"))
    assert en < brf and brf_mean < brf


# ------------------------------------------------------------------------ errors
def test_error_enum_on_continuous_names_site():
    g = vi.with_estimators(gauss_guide, {"z": vi.enum})

    @vi.expectation
    def f(key, p):
        return g.simulate(key, p).retval

    with pytest.raises(ppl.ModelError, match="'z'.*vi.enum|vi.enum.*'z'"):
        f.grad_estimate(jax.random.key(0), GP)


def test_error_reparam_on_discrete_names_site():
    @ppl.gen
    def guide(t):
        return ppl.flip(t, estimator=vi.reparam) @ "coin"

    @vi.expectation
    def f(key, t):
        return guide.simulate(key, t).retval * 1.0

    with pytest.raises(ppl.ModelError, match="'coin'"):
        f.grad_estimate(jax.random.key(0), 0.3)


def test_error_non_float_params():
    @vi.expectation
    def f(key, p):
        return ppl.normal.simulate(key, 0.0, 1.0).retval

    with pytest.raises(ppl.ModelError, match=r"params\['n'\].*float"):
        f.grad_estimate(jax.random.key(0), {"n": jnp.array(3), "w": jnp.array(1.0)})


def test_error_non_scalar():
    @vi.expectation
    def f_vec(key, mu):
        return ppl.normal.repeat(3).simulate(key, mu, 1.0).retval

    with pytest.raises(ppl.ModelError, match="f_vec.*shape \\(3,\\).*scalar"):
        f_vec.estimate(jax.random.key(0), 0.0)


def test_error_nested_enum_names_site_and_alternative():
    @ppl.gen
    def guide(t):
        return ppl.flip(t, estimator=vi.enum) @ "coin"

    @vi.expectation
    def f(key, t):
        return jnp.sum(guide.repeat(4).simulate(key, t).retval * 1.0)

    with pytest.raises(ppl.ModelError, match="'coin'.*vi.reinforce"):
        f.grad_estimate(jax.random.key(0), 0.3)


def test_error_reinforce_inside_user_jax_vmap():
    @ppl.gen
    def guide(t):
        return ppl.flip(t) @ "coin"

    @vi.expectation
    def f(key, t):
        bs = jax.vmap(lambda k: guide.simulate(k, t).retval)(jax.random.split(key, 3))
        return jnp.sum(bs * 1.0)

    with pytest.raises(ppl.ModelError, match="'coin'.*repeat"):
        f.grad_estimate(jax.random.key(0), 0.3)


@ppl.gen
def _one(t):
    b = ppl.flip(jax.nn.sigmoid(t)) @ "coin"
    return ppl.normal(2.0 * b, 1.0) @ "z"


@ppl.gen
def _step(c, t):
    b = ppl.flip(jax.nn.sigmoid(t + c)) @ "coin"  # depends on the carry: earlier draws
    return c + 0.5 * b, b


@ppl.gen
def _left(t):
    return ppl.flip(jax.nn.sigmoid(t)) @ "x"


@ppl.gen
def _right(t):
    return ppl.flip(jax.nn.sigmoid(-t)) @ "x"


@ppl.gen
def _branchy(t):
    c = ppl.flip(0.5) @ "c"
    return ppl.cond(c, _left, _right)(t) @ "br"


def test_reinforce_inside_repeat_scan_cond_unbiased():
    """Score-function sites inside ppl.repeat, ppl.scan (depending on earlier draws) and
    ppl.cond: their score terms come from the returned traces."""
    import itertools

    @vi.expectation
    def f(key, t):
        k1, k2, k3 = jax.random.split(key, 3)
        zs = _one.repeat(3).simulate(k1, t).retval
        c, _ = ppl.scan(_step, length=3).simulate(k2, 0.0, jnp.full(3, t)).retval
        x = _branchy.simulate(k3, t).retval
        return jnp.sum(zs**2) + 3.0 * c + 2.0 * x

    def exact(t):
        p = jax.nn.sigmoid(t)
        total = 3 * (5 * p + (1 - p)) + 2.0 * (0.5 * p + 0.5 * (1 - p))
        for bits in itertools.product([0, 1], repeat=3):
            c, pr = 0.0, 1.0
            for b in bits:
                q = jax.nn.sigmoid(t + c)
                pr, c = pr * (q if b else 1 - q), c + 0.5 * b
            total = total + pr * 3.0 * c
        return total

    g = estimates(f, jnp.array(0.3))
    assert_unbiased({"t": g}, {"t": float(jax.grad(exact)(0.3))}, "combinators")


def test_reparam_inside_combinators_and_vmap():
    """Reparameterized sites work inside ppl.vmap / repeat / scan and jax.vmap in the program."""

    @ppl.gen
    def step(c, _):
        z = ppl.normal(c, 1.0) @ "z"
        return z, z

    @vi.expectation
    def f(key, mu):
        k1, k2, k3 = jax.random.split(key, 3)
        a = ppl.normal.repeat(3).simulate(k1, mu, 1.0).retval.sum()
        _, zs = ppl.scan(step, length=4).simulate(k2, mu, None).retval
        c = jax.vmap(lambda k: ppl.normal.simulate(k, mu, 1.0).retval)(jax.random.split(k3, 2)).sum()
        return a + zs.sum() + c

    g = f.grad_estimate(jax.random.key(0), 0.5)
    assert abs(float(g) - (3 + 4 + 2)) < 1e-5


def test_deterministic_and_jit_vmap():
    obj = gauss_elbo(vi.reinforce(baseline="mean"))
    a = obj.grad_estimate(jax.random.key(7), GP)
    b = jax.jit(obj.grad_estimate)(jax.random.key(7), GP)
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    v = jax.vmap(lambda k: obj.estimate(k, GP))(jax.random.split(jax.random.key(0), 3))
    assert v.shape == (3,)


def test_with_estimators_prefix_and_precedence():
    """An override naming a nested call applies to every site under it and wins over the site."""

    @ppl.gen
    def sub(theta):
        a = ppl.bernoulli(logits=theta, estimator=vi.reinforce) @ "a"
        b = ppl.bernoulli(logits=-theta) @ "b"
        return a + b

    @ppl.gen
    def guide(theta):
        return sub(theta) @ "sub"

    g = vi.with_estimators(guide, {"sub": vi.enum})

    @vi.expectation
    def f(key, theta):
        return g.simulate(key, theta).retval * 1.5

    # both sites enumerated: the estimate is exact, E = 1.5 (sigmoid(t) + sigmoid(-t)) = 1.5
    ks = jax.random.split(jax.random.key(0), 5)
    vals = jax.jit(jax.vmap(lambda k: f.value_and_grad_estimate(k, 0.4)))(ks)  # one compiled program
    assert np.allclose(np.asarray(vals[0]), 1.5, atol=1e-5) and np.allclose(np.asarray(vals[1]), 0.0, atol=1e-5)
    # outside an expectation program the wrapper behaves as the guide
    assert g.simulate(jax.random.key(1), 0.4).choices["sub", "a"].shape == ()


def test_error_mvd_unsupported_and_bad_baseline():
    @ppl.gen
    def guide(t):
        return ppl.gamma(t, 1.0, estimator=vi.mvd) @ "g"

    @vi.expectation
    def f(key, t):
        return guide.simulate(key, t).retval

    with pytest.raises(ppl.ModelError, match="vi.mvd.*'g'"):
        f.grad_estimate(jax.random.key(0), 2.0)
    with pytest.raises(ppl.ModelError, match="baseline"):
        vi.reinforce(baseline="median")


def test_array_valued_sites_and_args():
    """Array-valued sites and arguments; estimate/grad under jit and vmap agree."""

    @ppl.gen
    def guide(p, n):
        return ppl.normal(p["m"] * jnp.ones(n), jnp.exp(p["s"])) @ "z"

    @vi.expectation
    def f(key, p, target, n):
        z = guide.simulate(key, p, n).retval
        return -jnp.sum((z - target) ** 2)

    p = {"m": jnp.array(0.5), "s": jnp.array(-1.0)}
    target = jnp.arange(4.0)
    g = estimates(f, p, target, 4, n=2000)
    exact = {"m": float(-2 * jnp.sum(0.5 - target)), "s": float(-2 * 4 * jnp.exp(2 * p["s"]))}
    assert_unbiased(g, exact, "array")
