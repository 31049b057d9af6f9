"""Every distribution wrapper: log densities agree with scipy.stats (and numpyro), batched parameters
give one batched site whose log density is summed identically in every GFI method."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
import scipy.special as sp
import scipy.stats as st

import ppl
from ppl import ChoiceMap, gen, select, select_none

B = 3  # batch size of the batched-parameter sites
f32 = lambda *v: jnp.asarray(v, jnp.float32)  # noqa: E731
COV = np.array([[2.0, 0.3], [0.3, 1.0]], np.float32)
PROBS = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [1 / 3, 1 / 3, 1 / 3]], np.float32)

def _wishart_cholesky_logpdf(L, df, scale):
    """Density of the Cholesky factor L of W ~ Wishart(df, scale): the Wishart density of L L^T
    times the Jacobian of L -> L L^T, 2^p prod_i L_ii^(p - i) (i = 0..p-1)."""
    p = L.shape[-1]
    jac = p * np.log(2.0) + sum((p - i) * np.log(L[i, i]) for i in range(p))
    return st.wishart.logpdf(L @ L.T, df, scale) + jac


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
    # issue 12 families (numpyro's parameter names; low/high, gate positional or by keyword)
    "half_cauchy": (ppl.half_cauchy, (f32(1.0, 0.5, 2.0),), {}, lambda x, s: st.halfcauchy.logpdf(x, scale=s)),
    "truncated_normal": (ppl.truncated_normal, (f32(0.0, 1.0, -1.0), f32(1.0, 0.5, 2.0), f32(-1.0, 0.0, -3.0),
                                                f32(1.0, 2.0, 0.0)), {},
                         lambda x, m, s, lo, hi: st.truncnorm.logpdf(x, (lo - m) / s, (hi - m) / s, m, s)),
    "von_mises": (ppl.von_mises, (f32(0.0, 1.0, -2.0), f32(1.0, 0.5, 4.0)), {},
                  lambda x, m, k: st.vonmises.logpdf(x, k, m)),
    "negative_binomial": (ppl.negative_binomial, (f32(3.0, 1.5, 5.0),), {"probs": f32(0.4, 0.7, 0.2)},
                          lambda x, n, p: st.nbinom.logpmf(x, n, 1 - p)),
    "negative_binomial2": (ppl.negative_binomial2, (f32(2.0, 0.5, 6.0), f32(3.0, 1.0, 0.5)), {},
                           lambda x, m, c: st.nbinom.logpmf(x, c, c / (c + m))),
    "zero_inflated_poisson": (ppl.zero_inflated_poisson, (f32(0.3, 0.0, 0.8), f32(2.0, 0.5, 4.0)), {},
                              lambda x, g, r: np.log(g * (x == 0) + (1 - g) * st.poisson.pmf(x, r))),
    "zero_inflated_negative_binomial2": (
        ppl.zero_inflated_negative_binomial2, (f32(2.0, 0.5, 6.0), f32(3.0, 1.0, 0.5)), {"gate": f32(0.3, 0.0, 0.6)},
        lambda x, m, c, g: np.log(g * (x == 0) + (1 - g) * st.nbinom.pmf(x, c, c / (c + m)))),
    "wishart": (ppl.wishart, (f32(4.0, 3.0, 5.0), jnp.asarray(np.stack([COV, np.eye(2, dtype=np.float32), COV / 2]))),
                {}, lambda x, df, s: np.array([st.wishart.logpdf(xi, dfi, si) for xi, dfi, si in zip(x, df, s)])),
    "wishart_cholesky": (ppl.wishart_cholesky, (f32(4.0, 3.0, 5.0),
                                                jnp.asarray(np.stack([COV, np.eye(2, dtype=np.float32), COV / 2]))),
                         {}, lambda x, df, s: np.array([_wishart_cholesky_logpdf(xi, dfi, si)
                                                        for xi, dfi, si in zip(x, df, s)])),
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
    event = {"dirichlet": (3,), "mv_normal": (2,), "wishart": (2, 2), "wishart_cholesky": (2, 2)}.get(name, ())
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


# ------------------------------------------------------------------ issue 12 families: static-argument
# families, sampling moments, HMC on constrained supports, parameter errors
def _z_ok(draws, truth, k=4.0):
    """|mean - truth| < k standard errors (i.i.d. draws along axis 0)."""
    draws = np.asarray(draws, np.float64)
    se = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    return np.all(np.abs(draws.mean(axis=0) - truth) < k * se + 1e-6), (draws.mean(axis=0), truth, se)


def test_lkj_cholesky_and_lkj_density_and_moments():
    """d = 2: the correlation r = L[1, 0] has (r + 1) / 2 ~ Beta(eta, eta), so E[r^2] = 1 / (2 eta + 1)."""
    eta, r = 2.0, 0.3
    L = jnp.array([[1.0, 0.0], [r, np.sqrt(1 - r * r)]], jnp.float32)
    exact = st.beta.logpdf((r + 1) / 2, eta, eta) - np.log(2.0)

    @gen
    def m(eta):
        Lc = ppl.lkj_cholesky(2, eta) @ "L"
        ppl.lkj(2, eta) @ "C"
        return Lc

    lp, _ = m.assess(ChoiceMap({"L": L, "C": L @ L.T}), eta)
    close(lp, 2 * exact)
    _, w = m.generate(jax.random.key(0), ChoiceMap({"L": L}), eta)
    close(w, exact)
    n = 4000
    draws = ppl.lkj_cholesky.repeat(n).simulate(jax.random.key(1), 3, eta).choices[()]
    assert draws.shape == (n, 3, 3)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(draws), axis=-1), 1.0, atol=1e-5)  # unit rows
    assert np.all(np.triu(np.asarray(draws), 1) == 0) and np.all(np.diagonal(np.asarray(draws), 0, 1, 2) > 0)
    # in dimension 3 every off-diagonal correlation has the marginal Beta(eta - 1 + 3/2, same) law
    corr = np.einsum("nij,nkj->nik", np.asarray(draws), np.asarray(draws))[:, 1, 0]
    b = eta - 1 + 3 / 2
    ok, info = _z_ok(corr ** 2, 1 / (2 * b + 1))
    assert ok, info


def test_multinomial():
    probs = jnp.array([0.2, 0.3, 0.5])

    @gen
    def m(p):
        return ppl.multinomial(10, p) @ "counts"

    lp, _ = m.assess(ChoiceMap({"counts": jnp.array([2, 3, 5])}), probs)
    close(lp, st.multinomial.logpmf([2, 3, 5], 10, [0.2, 0.3, 0.5]))
    lp_bad, _ = m.assess(ChoiceMap({"counts": jnp.array([2, 3, 4])}), probs)  # not summing to total_count
    assert float(lp_bad) == -np.inf
    draws = ppl.multinomial(10, logits=jnp.log(probs)).gf.repeat(3000).simulate(
        jax.random.key(0), 10, jnp.log(probs)).choices[()]
    assert draws.shape == (3000, 3) and jnp.issubdtype(draws.dtype, jnp.integer)
    assert np.all(np.asarray(draws).sum(-1) == 10)
    ok, info = _z_ok(draws, 10 * np.asarray(probs))
    assert ok, info

    @gen
    def traced_count(n):  # a float/array total_count is traced: sampling needs total_count_max
        return ppl.multinomial(n, probs) @ "counts"

    with pytest.raises(ppl.ParameterError, match="'counts'.*total_count_max"):
        traced_count.simulate(jax.random.key(0), jnp.array(10))

    @gen
    def with_max(n):
        return ppl.multinomial(n, probs, total_count_max=10) @ "counts"

    # numpyro 0.22 alone would return 10 trials here (and floats): ppl.multinomial masks the surplus
    c = with_max.repeat(50).simulate(jax.random.key(0), jnp.array(7)).choices["counts"]
    assert jnp.issubdtype(c.dtype, jnp.integer) and np.all(np.asarray(c).sum(-1) == 7)


MOMENTS = {  # name -> (wrapper, args, statistic of the draws, its exact expectation)
    "half_cauchy": (ppl.half_cauchy, (2.0,), lambda x: x < 2.0, 0.5),  # median = scale
    "truncated_normal": (ppl.truncated_normal, (0.5, 2.0, -1.0, 1.0), lambda x: x,
                         st.truncnorm.mean(-0.75, 0.25, 0.5, 2.0)),
    "truncated_normal_low_only": (ppl.truncated_normal, (0.0, 1.0, 1.0), lambda x: x, st.truncnorm.mean(1.0, np.inf)),
    "von_mises": (ppl.von_mises, (0.5, 2.0), lambda x: jnp.cos(x - 0.5), sp.i1e(2.0) / sp.i0e(2.0)),
    "negative_binomial": (ppl.negative_binomial, (3.0, 0.4), lambda x: x, 3.0 * 0.4 / 0.6),
    "negative_binomial2": (ppl.negative_binomial2, (2.5, 1.5), lambda x: x, 2.5),
    "zero_inflated_poisson": (ppl.zero_inflated_poisson, (0.3, 4.0), lambda x: x, 0.7 * 4.0),
    "zero_inflated_negative_binomial2": (ppl.zero_inflated_negative_binomial2, (3.0, 2.0, 0.25), lambda x: x, 0.75 * 3.0),
    "wishart": (ppl.wishart, (4.0, jnp.asarray(COV)), lambda x: x, 4.0 * COV),
}


@pytest.mark.parametrize("name", list(MOMENTS))
def test_sampling_moments(name):
    gf, args, stat, truth = MOMENTS[name]
    draws = gf.repeat(4000).simulate(jax.random.key(7), *args).choices[()]
    ok, info = _z_ok(stat(draws), truth)
    assert ok, info


def test_hmc_on_lkj_cholesky_and_von_mises_targets_the_prior():
    """HMC moves both constrained sites in unconstrained space (CorrCholesky and circular
    transforms); with no data it must sample the prior: E[r^2] = 1/(2 eta + 1), E[cos(x - loc)] =
    I1(k)/I0(k); tolerance 4 standard errors from the effective sample size."""
    from inference import mcmc
    from inference.diagnostics.mcmc import ess

    @gen
    def m():
        L = ppl.lkj_cholesky(2, 2.0) @ "L"
        ppl.von_mises(0.5, 2.0) @ "angle"
        return L

    res = mcmc.run(jax.random.key(0), mcmc.hmc(ppl.select("L", "angle"), 0.3, 6, adapt_step_size=True),
                   m.simulate(jax.random.key(1)), 300, n_chains=2, burn_in=150)
    L = np.asarray(res.choices["L"])
    np.testing.assert_allclose(np.linalg.norm(L, axis=-1), 1.0, atol=1e-4)
    a = np.asarray(res.choices["angle"])
    assert np.all(np.abs(a) <= np.pi)
    for stat, truth in ((L[..., 1, 0] ** 2, 1 / 5), (np.cos(a - 0.5), sp.i1e(2.0) / sp.i0e(2.0))):
        se = stat.std() / np.sqrt(ess(stat))
        assert abs(stat.mean() - truth) < 4 * se, (stat.mean(), truth, se)


@pytest.mark.parametrize("call, match", [
    (lambda: ppl.truncated_normal(0.0, 1.0, 1.0, -1.0), "low must be less than high"),
    (lambda: ppl.truncated_normal(0.0, -1.0, -1.0, 1.0), "scale"),  # the base normal's parameter
    (lambda: ppl.wishart(1.0, jnp.eye(3)), "greater than dimension - 1 = 2"),
    (lambda: ppl.zero_inflated_negative_binomial2(2.0, 1.0, 1.5), "gate"),
    (lambda: ppl.lkj_cholesky(1, 1.0), "Dimension"),
    (lambda: ppl.von_mises(0.0, -2.0), "concentration"),
])
def test_new_family_parameter_errors_name_the_address(call, match):
    @gen
    def m():
        return call() @ "site"

    with pytest.raises(ppl.ParameterError, match=f"(?s)'site'.*{match}|{match}.*'site'"):
        m.simulate(jax.random.key(0))
