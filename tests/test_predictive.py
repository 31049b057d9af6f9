"""Predictive distributions, pointwise log-likelihoods and model comparison against exact answers.

The conjugate normal model ``mu ~ N(M0, S0^2)``, ``y_i ~ N(mu, SIGMA^2)`` has closed-form prior
and posterior predictive distributions and exact leave-one-out predictive densities. Every
statistical check is a z-test whose standard error comes from the sample spread (and the
importance sampler's ESS), with fixed seeds.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ppl
from inference import importance, mcmc
from inference.diagnostics.checks import CompileCounter, mean_ztest
from inference.diagnostics.mcmc import mean_within_mcse, to_arviz
from inference.predictive import Predictive, log_likelihood

M0, S0, SIGMA = 0.5, 2.0, 1.0


@ppl.gen
def model(n):
    mu = ppl.normal(M0, S0) @ "mu"
    return ppl.normal(jnp.full(n, mu), SIGMA) @ "y"


def posterior(ys, sigma=SIGMA):
    """Exact posterior mean and variance of mu given ys (noise scale ``sigma``)."""
    ys = np.asarray(ys, np.float64)
    prec = 1 / S0**2 + ys.size / sigma**2
    return (M0 / S0**2 + ys.sum() / sigma**2) / prec, 1 / prec


YS = jnp.array([1.2, 0.4, 2.1, 1.5])
OBS = {"y": YS}


def exact_draws(seed, shape, ys=YS, sigma=SIGMA):
    m, v = posterior(ys, sigma)
    return {"mu": jnp.asarray(m + np.sqrt(v) * np.random.default_rng(seed).normal(size=shape), jnp.float32)}


def var_ztest(x, target, z=4.0):
    """z-test of the sample variance of independent draws (standard error from the spread of the
    squared deviations)."""
    x = np.asarray(x, np.float64)
    d = (x - x.mean()) ** 2
    return mean_ztest(d * x.size / (x.size - 1), target, z)


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    return az


# ------------------------------------------------------------------------------ predictive
def test_posterior_predictive_matches_closed_form():
    n = 4000
    pred = Predictive(model, exact_draws(0, n))(jax.random.key(1), 3)
    assert pred.addresses() == ["y"] and pred["y"].shape == (n, 3)
    m, v = posterior(YS)
    y = np.asarray(pred["y"], np.float64)
    for j in range(3):
        assert mean_ztest(y[:, j], m).passed
        assert var_ztest(y[:, j], v + SIGMA**2).passed
    # two new observations share mu: their covariance is the posterior variance of mu
    assert mean_ztest((y[:, 0] - y[:, 0].mean()) * (y[:, 1] - y[:, 1].mean()), v).passed


def test_prior_predictive_matches_closed_form():
    n = 4000
    pred = Predictive(model, n_samples=n)(jax.random.key(2), 2)
    assert pred.addresses() == ["mu", "y"] and pred["y"].shape == (n, 2) and pred["mu"].shape == (n,)
    y = np.asarray(pred["y"], np.float64)
    assert mean_ztest(y[:, 0], M0).passed
    assert var_ztest(y[:, 0], S0**2 + SIGMA**2).passed
    assert mean_ztest((y[:, 0] - y[:, 0].mean()) * (y[:, 1] - y[:, 1].mean()), S0**2).passed
    # same key, same bits
    again = Predictive(model, n_samples=n)(jax.random.key(2), 2)
    assert np.array_equal(np.asarray(again["y"]), y.astype(np.float32))


def test_posterior_predictive_from_weighted_particles():
    ps = importance.sample(jax.random.key(3), model, (4,), OBS, 20000)
    ess = float(ps.ess())
    n = 4000
    assert Predictive(model, ps).n_samples == 20000
    pred = Predictive(model, ps, n_samples=n, return_sites=["mu", "y"])(jax.random.key(4), 1)
    assert pred.addresses() == ["mu", "y"] and pred["y"].shape == (n, 1)
    m, v = posterior(YS)
    y = np.asarray(pred["y"][:, 0], np.float64)
    # error of the weighted posterior (ESS) plus the spread of the n resampled predictions
    se = np.sqrt(v / ess + (v + SIGMA**2) / n)
    assert mean_ztest(y, m, se=se).passed
    assert var_ztest(y, v + SIGMA**2).passed
    # the latent is resampled by weight: its mean is the posterior mean
    assert mean_ztest(np.asarray(pred["mu"], np.float64), m, se=np.sqrt(v / ess + v / n)).passed


@ppl.gen
def regression(x):
    w = ppl.normal(0.0, 1.0) @ "w"
    return ppl.normal(w * x, 0.5) @ "y"


def test_new_arguments_at_prediction():
    x_train = jnp.array([-1.0, 0.0, 1.0, 2.0])
    y_train = jnp.array([-1.9, 0.2, 2.2, 3.9])
    prec = 1.0 + float(jnp.sum(x_train**2)) / 0.25
    w_mean, w_var = float(jnp.sum(x_train * y_train)) / 0.25 / prec, 1 / prec
    n = 4000
    draws = {"w": jnp.asarray(w_mean + np.sqrt(w_var) * np.random.default_rng(5).normal(size=n), jnp.float32)}
    x_new = jnp.array([-3.0, 0.5, 4.0, 10.0, 7.0])  # other values, another length
    pred = Predictive(regression, draws)(jax.random.key(6), x_new)
    y = np.asarray(pred["y"], np.float64)
    assert y.shape == (n, 5)
    for j, x in enumerate(np.asarray(x_new)):
        assert mean_ztest(y[:, j], w_mean * x).passed
        assert var_ztest(y[:, j], x**2 * w_var + 0.25).passed


@pytest.fixture(scope="module")
def mcmc_res():
    tr, _ = model.generate(jax.random.key(12), OBS, 4)
    return mcmc.run(jax.random.key(13), mcmc.mh(ppl.select("mu")), tr, 1000, n_chains=4, burn_in=200)


def test_deterministic_sites_are_returned():
    @ppl.gen
    def with_det(x):
        w = ppl.normal(0.0, 1.0) @ "w"
        mean = ppl.deterministic(w * x) @ "mean"
        return ppl.normal(mean, 0.5) @ "y"

    draws = {"w": jnp.array([1.0, -2.0])}
    out = Predictive(with_det, draws)(jax.random.key(0), jnp.array([1.0, 3.0]))
    assert out.addresses() == ["mean", "y"]
    np.testing.assert_allclose(np.asarray(out["mean"]), [[1.0, 3.0], [-2.0, -6.0]])
    only = Predictive(with_det, draws, return_sites="mean")(jax.random.key(0), jnp.array([2.0]))
    assert only.addresses() == ["mean"] and only["mean"].shape == (2, 1)


def test_posterior_predictive_from_autoguide_draws():
    from inference import vi

    @ppl.gen
    def vi_model(params, n):   # the objectives' convention: the model receives the guide's params
        mu = ppl.normal(M0, S0) @ "mu"
        return ppl.normal(jnp.full(n, mu), SIGMA) @ "y"

    guide = vi.AutoNormal(vi_model, OBS, (4,))
    params = guide.init_params(jax.random.key(0))
    draws = guide.sample_posterior(jax.random.key(1), params, 300)
    out = Predictive(vi_model, draws, return_sites=["mu", "y"])(jax.random.key(2), params, 6)
    assert out["y"].shape == (300, 6)
    assert np.array_equal(np.asarray(out["mu"]), np.asarray(draws["mu"]))
    ll = log_likelihood(vi_model, draws, params, 4, observations=OBS)
    expect = stats.norm.logpdf(np.asarray(YS)[None], np.asarray(draws["mu"])[:, None], SIGMA)
    np.testing.assert_allclose(np.asarray(ll["y"]), expect, rtol=1e-5)


def test_chain_and_draw_axes_are_kept(mcmc_res):
    draws = exact_draws(7, (3, 50))
    pred = Predictive(model, draws, batch_ndims=2)(jax.random.key(8), 2)
    assert pred["y"].shape == (3, 50, 2)
    for post in (mcmc_res, mcmc_res.choices):
        out = Predictive(model, post)(jax.random.key(11), 5)
        assert out.addresses() == ["y"] and out["y"].shape == (4, 1000, 5)
    both = Predictive(model, mcmc_res, return_sites=["mu", "y"])(jax.random.key(11), 5)
    assert np.array_equal(np.asarray(both["mu"]), np.asarray(mcmc_res.choices["mu"]))  # draws are kept
    ll = log_likelihood(model, mcmc_res, 4, observations=OBS)
    assert ll["y"].shape == (4, 1000, 4)


def test_posterior_predictive_from_mcmc_matches_closed_form(mcmc_res):
    y = np.asarray(Predictive(model, mcmc_res)(jax.random.key(14), 1)["y"][..., 0])
    m, _ = posterior(YS)
    assert mean_within_mcse(y, m)[0]


def test_no_recompilation_on_new_data_values():
    pred = Predictive(model, exact_draws(15, 200))
    jax.block_until_ready(pred(jax.random.key(0), 3)["y"])
    ll = log_likelihood(model, exact_draws(15, 200), 4, observations=OBS)
    jax.block_until_ready(ll["y"])
    new_draws, new_ys = exact_draws(16, 200), {"y": YS + 1.0}
    with CompileCounter() as cc:
        out = Predictive(model, new_draws)(jax.random.key(1), 3)  # new draws, same shapes
        ll2 = log_likelihood(model, new_draws, 4, observations=new_ys)
        jax.block_until_ready((out["y"], ll2["y"]))
    assert cc.count == 0, cc.names
    x = jnp.linspace(0, 1, 6)
    rpred = Predictive(regression, {"w": jnp.ones(100)})
    jax.block_until_ready(rpred(jax.random.key(0), x)["y"])
    x_new = x * 3.0 + 1.0
    with CompileCounter() as cc:
        jax.block_until_ready(rpred(jax.random.key(0), x_new)["y"])  # new x values
    assert cc.count == 0, cc.names


def test_bad_input_is_reported():
    with pytest.raises(ppl.ArgumentError, match="n_samples"):
        Predictive(model)
    with pytest.raises(ppl.ArgumentError, match="n_samples"):
        Predictive(model, exact_draws(0, 10), n_samples=5)
    with pytest.raises(ppl.ShapeError, match="'mu'"):
        Predictive(model, {"mu": jnp.zeros(4), "other": jnp.zeros(5)})
    with pytest.raises(ppl.AddressError, match="'nope'"):
        Predictive(model, exact_draws(0, 10), return_sites=["nope"])(jax.random.key(0), 2)
    with pytest.raises(ppl.ArgumentError, match="posterior"):
        Predictive(model, [1.0, 2.0])

    @ppl.gen
    def two_latents(n):
        mu = ppl.normal(0.0, 1.0) @ "mu"
        s = ppl.gamma(2.0, 2.0) @ "s"
        return ppl.normal(jnp.full(n, mu), s) @ "y"

    with pytest.raises(ppl.AddressError, match="'s'"):
        log_likelihood(two_latents, exact_draws(0, 10), 4, observations=OBS)


# ------------------------------------------------------------------------------ log-likelihood
def test_pointwise_log_likelihood_per_element_and_per_copy():
    draws = exact_draws(18, 7)
    ll = log_likelihood(model, draws, 4, observations=OBS)
    expect = stats.norm.logpdf(np.asarray(YS)[None, :], np.asarray(draws["mu"])[:, None], SIGMA)
    np.testing.assert_allclose(np.asarray(ll["y"]), expect, rtol=1e-5)

    @ppl.gen
    def point(mu):
        return ppl.normal(jnp.full(2, mu), SIGMA) @ "y"

    @ppl.gen
    def combinators(n):
        mu = ppl.normal(M0, S0) @ "mu"
        ppl.normal.repeat(n)(mu, SIGMA) @ "r"
        return point.repeat(3)(mu) @ "v"

    obs = {"r": YS, "v": {"y": jnp.arange(6.0).reshape(3, 2)}}
    ll = log_likelihood(combinators, draws, 4, observations=obs)
    mu = np.asarray(draws["mu"])[:, None]
    np.testing.assert_allclose(np.asarray(ll["r"]), stats.norm.logpdf(np.asarray(YS)[None], mu, SIGMA), rtol=1e-5)
    per_copy = stats.norm.logpdf(np.arange(6.0).reshape(1, 3, 2), mu[:, :, None], SIGMA).sum(-1)
    np.testing.assert_allclose(np.asarray(ll["v", "y"]), per_copy, rtol=1e-5)  # one value per copy

    ps = importance.sample(jax.random.key(19), model, (4,), OBS, 50)
    llp = log_likelihood(model, ps, 4, observations=OBS)
    expect = stats.norm.logpdf(np.asarray(YS)[None], np.asarray(ps.choices["mu"])[:, None], SIGMA)
    np.testing.assert_allclose(np.asarray(llp["y"]), expect, rtol=1e-5)


def test_loo_matches_exact_leave_one_out():
    """PSIS-LOO of the conjugate model (known variance, 20 observations) from exact posterior
    draws vs the exact sum of log p(y_i | y_-i)."""
    az = _az()
    ys = np.random.default_rng(20).normal(1.0, SIGMA, size=20)
    exact = 0.0
    for i in range(ys.size):
        m, v = posterior(np.delete(ys, i))
        exact += stats.norm.logpdf(ys[i], m, np.sqrt(v + SIGMA**2))
    draws = exact_draws(21, (4, 1000), ys)
    obs = {"y": jnp.asarray(ys, jnp.float32)}
    idata = to_arviz(draws, model=model, args=(20,), observations=obs)
    assert dict(idata.log_likelihood["y"].sizes) == {"chain": 4, "draw": 1000, "y_dim_0": 20}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata, pointwise=True)
    # Monte Carlo error of each point's importance-sampling estimate (delta method on the raw
    # weights 1 / p(y_i | mu_s)), summed over points (a bound whatever their correlation)
    ll = np.asarray(idata.log_likelihood["y"]).reshape(-1, 20).astype(np.float64)
    w = np.exp(-(ll - ll.min(0)))
    mc_se = float(np.sum(w.std(0, ddof=1) / w.mean(0) / np.sqrt(w.shape[0])))
    assert abs(float(loo.elpd_loo) - exact) < 4 * mc_se, (float(loo.elpd_loo), exact, mc_se)
    assert abs(float(loo.elpd_loo) - exact) < float(loo.se)
    assert np.all(np.asarray(loo.pareto_k) < 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        waic = az.waic(idata)
    assert np.isfinite(float(waic.elpd_waic)) and abs(float(waic.elpd_waic) - exact) < float(waic.se)


@ppl.gen
def wide_model(n):
    mu = ppl.normal(M0, S0) @ "mu"
    return ppl.normal(jnp.full(n, mu), 3.0) @ "y"


def test_compare_ranks_true_model_first():
    az = _az()
    ys = np.random.default_rng(22).normal(1.0, SIGMA, size=30)
    obs = {"y": jnp.asarray(ys, jnp.float32)}
    idatas = {}
    for name, m, sigma in (("wide", wide_model, 3.0), ("true", model, SIGMA)):
        draws = exact_draws(23, (2, 500), ys, sigma)
        pp = Predictive(m, draws, batch_ndims=2)(jax.random.key(25), 30)
        idatas[name] = to_arviz(draws, model=m, args=(30,), observations=obs, posterior_predictive=pp,
                                sample_stats={"lp": jnp.zeros((2, 500))})
        assert dict(idatas[name].posterior_predictive["y"].sizes) == {"chain": 2, "draw": 500, "y_dim_0": 30}
        assert idatas[name].observed_data["y"].shape == (30,)
        assert "lp" in idatas[name].sample_stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(idatas)
    assert list(table.index) == ["true", "wide"]
    assert float(table.loc["wide", "elpd_diff"]) > 0


def test_mcmc_draws_with_deterministic_sites_feed_log_likelihood_predictive_and_arviz():
    """mcmc.run stores ppl.deterministic values with the draws; they are recomputed, never given."""
    import arviz as az

    from inference import Predictive, log_likelihood, mcmc
    from inference.diagnostics.mcmc import to_arviz

    @ppl.gen
    def m():
        mu = ppl.normal(0.0, 1.0) @ "mu"
        ppl.deterministic(2.0 * mu) @ "two_mu"
        ppl.normal(jnp.full(3, mu), 1.0) @ "y"

    obs = ppl.ChoiceMap({"y": jnp.array([0.5, 1.0, 1.5])})
    tr, _ = m.generate(jax.random.key(0), obs)
    res = mcmc.run(jax.random.key(1), mcmc.mh(ppl.select("mu")), tr, 40, n_chains=2, progress=False)
    assert "two_mu" in res.choices.addresses()
    ll = log_likelihood(m, res, observations=obs)
    mu = np.asarray(res.choices["mu"])[..., None]
    y = np.array([0.5, 1.0, 1.5])
    np.testing.assert_allclose(ll["y"], -0.5 * (y - mu) ** 2 - 0.5 * np.log(2 * np.pi), rtol=1e-5, atol=1e-5)
    pred = Predictive(m, res, return_sites=["two_mu", "y"])(jax.random.key(2))
    np.testing.assert_allclose(pred["two_mu"], 2.0 * np.asarray(res.choices["mu"]), rtol=1e-6)
    idata = to_arviz(res, model=m, observations=obs)
    assert "y" in idata.log_likelihood and "two_mu" in idata.posterior
    az.waic(idata)
