"""Every distribution wrapper: log densities agree with scipy.stats (and numpyro), batched parameters
give one batched site whose log density is summed identically in every GFI method."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
import scipy.stats as st

import ppl
from ppl import ChoiceMap, gen, select, select_none

B = 3  # batch size of the batched-parameter sites
f32 = lambda *v: jnp.asarray(v, jnp.float32)  # noqa: E731
COV = np.array([[2.0, 0.3], [0.3, 1.0]], np.float32)
PROBS = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [1 / 3, 1 / 3, 1 / 3]], np.float32)

# name -> (wrapper, positional args, keyword args, scipy log density of x given the numpy args)
TABLE = {
    "normal": (ppl.normal, (f32(0.0, 1.0, -2.0), f32(1.0, 0.5, 2.0)), {},
               lambda x, m, s: st.norm.logpdf(x, m, s)),
    "half_normal": (ppl.half_normal, (f32(1.0, 0.5, 2.0),), {}, lambda x, s: st.halfnorm.logpdf(x, scale=s)),
    "log_normal": (ppl.log_normal, (f32(0.0, 1.0, -1.0), f32(1.0, 0.5, 0.3)), {},
                   lambda x, m, s: st.lognorm.logpdf(x, s, scale=np.exp(m))),
    "gamma": (ppl.gamma, (f32(2.0, 0.5, 5.0), f32(1.0, 2.0, 0.5)), {},
              lambda x, a, r: st.gamma.logpdf(x, a, scale=1 / r)),
    "inverse_gamma": (ppl.inverse_gamma, (f32(3.0, 2.0, 5.0), f32(1.0, 2.0, 0.5)), {},
                      lambda x, a, r: st.invgamma.logpdf(x, a, scale=r)),
    "beta": (ppl.beta, (f32(2.0, 0.5, 5.0), f32(1.0, 2.0, 3.0)), {}, lambda x, a, b: st.beta.logpdf(x, a, b)),
    "exponential": (ppl.exponential, (f32(1.0, 2.0, 0.5),), {}, lambda x, r: st.expon.logpdf(x, scale=1 / r)),
    "uniform": (ppl.uniform, (f32(0.0, -1.0, 2.0), f32(1.0, 3.0, 2.5)), {},
                lambda x, lo, hi: st.uniform.logpdf(x, lo, hi - lo)),
    "student_t": (ppl.student_t, (f32(3.0, 1.5, 10.0), f32(0.0, 1.0, -1.0), f32(1.0, 2.0, 0.5)), {},
                  lambda x, df, m, s: st.t.logpdf(x, df, m, s)),
    "cauchy": (ppl.cauchy, (f32(0.0, 1.0, -1.0), f32(1.0, 2.0, 0.5)), {},
               lambda x, m, s: st.cauchy.logpdf(x, m, s)),
    "laplace": (ppl.laplace, (f32(0.0, 1.0, -1.0), f32(1.0, 2.0, 0.5)), {},
                lambda x, m, s: st.laplace.logpdf(x, m, s)),
    "dirichlet": (ppl.dirichlet, (jnp.asarray(PROBS * 4 + 0.5),), {},
                  lambda x, a: np.array([st.dirichlet.logpdf(xi / xi.sum(), ai) for xi, ai in zip(x, a)])),
    "mv_normal": (ppl.mv_normal, (jnp.asarray(np.arange(6, dtype=np.float32).reshape(3, 2)), jnp.asarray(COV)),
                  {}, lambda x, m, c: np.array([st.multivariate_normal.logpdf(xi, mi, c) for xi, mi in zip(x, m)])),
    "bernoulli_probs": (ppl.bernoulli, (), {"probs": f32(0.2, 0.5, 0.9)}, lambda x, p: st.bernoulli.logpmf(x, p)),
    "bernoulli_logits": (ppl.bernoulli, (), {"logits": f32(-1.0, 0.0, 2.0)},
                         lambda x, lg: st.bernoulli.logpmf(x, 1 / (1 + np.exp(-lg)))),
    "flip": (ppl.flip, (f32(0.2, 0.5, 0.9),), {}, lambda x, p: st.bernoulli.logpmf(x, p)),
    "binomial": (ppl.binomial, (jnp.asarray([5, 10, 3]), f32(0.2, 0.5, 0.9)), {},
                 lambda x, n, p: st.binom.logpmf(x, n, p)),
    "poisson": (ppl.poisson, (f32(1.0, 4.0, 0.5),), {}, lambda x, r: st.poisson.logpmf(x, r)),
    "categorical_probs": (ppl.categorical, (), {"probs": jnp.asarray(PROBS)},
                          lambda x, p: np.log(p[np.arange(B), x.astype(int)])),
    "categorical_logits": (ppl.categorical, (), {"logits": jnp.log(jnp.asarray(PROBS))},
                           lambda x, lg: np.log(np.exp(lg)[np.arange(B), x.astype(int)])),
    "geometric": (ppl.geometric, (f32(0.2, 0.5, 0.9),), {}, lambda x, p: st.geom.logpmf(x + 1, p)),
}


def _model(gf, kw_names):
    @gen
    def model(*params):
        pos = params[: len(params) - len(kw_names)]
        kw = dict(zip(kw_names, params[len(params) - len(kw_names):]))
        return gf(*pos, **kw) @ "x"

    return model


def _expected(fn, x, params):
    return float(np.sum(fn(np.asarray(x, np.float64), *[np.asarray(p, np.float64) for p in params])))


def close(a, b):
    assert abs(float(a) - float(b)) <= 1e-3 + 1e-4 * abs(float(b)), (float(a), float(b))


@pytest.mark.parametrize("name", list(TABLE))
def test_distribution_gfi_matches_scipy_batched(name):
    gf, args, kwargs, logpdf = TABLE[name]
    params = tuple(args) + tuple(kwargs.values())
    model = _model(gf, tuple(kwargs))

    @jax.jit
    def all_methods(k1, k2, params):  # one compiled program, two sampler instances (slow to compile)
        tr = model.simulate(k1, *params)
        lp, rv = model.assess(tr.choices, *params)
        gtr, gw = model.generate(k2, tr.choices, *params)
        r0, rw0, _ = model.regenerate(k2, tr, select_none(), *params)
        r1, rw1, rd = model.regenerate(k2, tr, select("x"), *params)
        tr_b = r1  # a fresh draw: update tr to its value
        utr, uw, ud = model.update(k2, tr, tr_b.choices, *params)
        d = type(gf)(gf.name, gf.builder, tuple(kwargs)).make(params)  # numpyro's own density
        np_lp = jnp.sum(d.log_prob(tr.choices["x"]))
        return tr, tr_b, lp, gtr, gw, utr, uw, ud, r0, rw0, r1, rw1, rd, np_lp

    tr, tr_b, lp, gtr, gw, utr, uw, ud, r0, rw0, r1, rw1, rd, np_lp = all_methods(
        jax.random.key(0), jax.random.key(1), params)
    x, xb = tr.choices["x"], tr_b.choices["x"]
    event = {"dirichlet": (3,), "mv_normal": (2,)}.get(name, ())
    assert x.shape == (B,) + event, x.shape  # one site holding the batch
    exp_x, exp_b = _expected(logpdf, x, params), _expected(logpdf, xb, params)
    assert np.isfinite(exp_x)
    close(tr.score, exp_x)
    close(lp, exp_x)  # assess
    close(gw, exp_x)  # generate, fully constrained: weight = score
    close(gtr.score, exp_x)
    close(utr.score, exp_b)  # update to another value: weight = density ratio
    close(uw, exp_b - exp_x)
    np.testing.assert_array_equal(np.asarray(ud["x"]), np.asarray(x))
    close(rw0, 0.0)  # regenerate nothing
    close(rw1, 0.0)  # regenerate the site from its prior: weight 0
    close(r1.score, _expected(logpdf, r1.choices["x"], params))
    np.testing.assert_array_equal(np.asarray(rd["x"]), np.asarray(x))
    close(np_lp, exp_x)  # numpyro's own log density agrees too


def test_scalar_sites_and_dtypes():
    @gen
    def m():
        a = ppl.normal(0.0, 1.0) @ "a"
        b = ppl.flip(0.3) @ "b"
        c = ppl.poisson(2.0) @ "c"
        d = ppl.categorical(logits=jnp.zeros(4)) @ "d"
        return a, b, c, d

    ch = m.simulate(jax.random.key(0)).choices
    assert ch["a"].shape == () and jnp.issubdtype(ch["a"].dtype, jnp.floating)
    for a in "bcd":
        assert ch[a].shape == () and jnp.issubdtype(ch[a].dtype, jnp.integer), (a, ch[a].dtype)
    # python numbers and integer-valued floats are accepted as observations at discrete sites
    lp, _ = m.assess(ChoiceMap({"a": 0.0, "b": 1, "c": 2.0, "d": 3}))
    expected = st.norm.logpdf(0) + np.log(0.3) + st.poisson.logpmf(2, 2.0) + np.log(0.25)
    close(lp, expected)


def test_dist_wraps_any_numpyro_distribution():
    @gen
    def m():
        t = ppl.dist(nd.StudentT(3.0, 1.0, 2.0)) @ "t"
        v = ppl.dist(nd.Normal(jnp.zeros(4), 1.0).to_event(1)) @ "v"
        return t, v

    tr = m.simulate(jax.random.key(0))
    assert tr.choices["v"].shape == (4,)
    expected = st.t.logpdf(float(tr.choices["t"]), 3.0, 1.0, 2.0) + st.norm.logpdf(np.asarray(tr.choices["v"])).sum()
    close(tr.score, expected)
    close(m.assess(tr.choices)[0], expected)
    with pytest.raises(TypeError, match="numpyro distribution"):
        ppl.dist(3.0)


def test_distribution_as_generative_function_directly():
    tr = ppl.normal.simulate(jax.random.key(0), 1.0, 2.0)
    close(tr.score, st.norm.logpdf(float(tr.retval), 1.0, 2.0))
    lp, v = ppl.gamma.assess(ChoiceMap.value(1.5), 2.0, 3.0)
    close(lp, st.gamma.logpdf(1.5, 2.0, scale=1 / 3.0))
    tr, w = ppl.normal.repeat(4).generate(jax.random.key(0), ChoiceMap.value(jnp.ones(4)), 0.0, 1.0)
    close(w, 4 * st.norm.logpdf(1.0))


def test_estimator_kwarg_is_recorded_not_passed_to_numpyro():
    inv = ppl.normal(0.0, 1.0, estimator="custom")
    assert inv.gf.estimator == "custom" and inv.gf.name == "normal"

    @gen
    def m():
        return ppl.normal(0.0, 1.0, estimator="custom") @ "x"

    tr = m.simulate(jax.random.key(0))
    close(tr.score, st.norm.logpdf(float(tr.retval)))
