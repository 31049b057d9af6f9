"""Importance sampling against exact answers (conjugate normal model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import importance
from inference.diagnostics.checks import CompileCounter, mean_ztest, unbiasedness_ztest

SIGMA0, SIGMA = 2.0, 1.0


@ppl.gen
def model(n):
    mu = ppl.normal(0.0, SIGMA0) @ "mu"
    return ppl.normal(jnp.full(n, mu), SIGMA) @ "ys"


@ppl.gen
def guide(m, s):
    return ppl.normal(m, s) @ "mu"


def exact(ys):
    n = ys.shape[0]
    prec = 1 / SIGMA0**2 + n / SIGMA**2
    post_mean = ys.sum() / SIGMA**2 / prec
    cov = SIGMA**2 * np.eye(n) + SIGMA0**2
    from scipy.stats import multivariate_normal

    log_z = multivariate_normal(np.zeros(n), cov).logpdf(np.asarray(ys))
    return float(log_z), float(post_mean), float(1 / prec)


YS = jnp.array([1.2, 0.4, 2.1, 1.5])
OBS = ppl.ChoiceMap({"ys": YS})


def test_log_marginal_likelihood_and_posterior_mean():
    log_z, m, v = exact(YS)
    ps = importance.sample(jax.random.key(0), model, (4,), OBS, 20000)
    assert ps.log_weights.shape == (20000,)
    assert abs(float(ps.log_marginal_likelihood()) - log_z) < 0.03
    est = float(ps.expectation(lambda tr: tr.choices["mu"]))
    se = np.sqrt(v / float(ps.ess()))
    assert abs(est - m) < 5 * se
    assert 0 < float(ps.ess()) <= 20000
    np.testing.assert_allclose(float(ps.normalized_weights().sum()), 1.0, rtol=1e-5)


def test_evidence_estimate_is_unbiased_in_z():
    log_z, _, _ = exact(YS)
    keys = jax.random.split(jax.random.key(1), 1000)
    lml = jax.vmap(lambda k: importance.sample(k, model, (4,), OBS, 10).log_marginal_likelihood())(keys)
    t = unbiasedness_ztest(np.asarray(lml), log_z)
    assert t.passed, t
    assert float(jnp.mean(lml)) < log_z  # Jensen: log Z-hat is biased low


def test_custom_proposal_is_exact_when_it_is_the_posterior():
    log_z, m, v = exact(YS)
    ps = importance.sample(jax.random.key(2), model, (4,), OBS, 100, proposal=guide,
                           proposal_args=(jnp.float32(m), jnp.float32(np.sqrt(v))))
    np.testing.assert_allclose(np.asarray(ps.log_weights), log_z, atol=1e-3)
    assert float(ps.ess()) > 99.9


def test_wide_proposal_moments():
    log_z, m, v = exact(YS)
    ps = importance.sample(jax.random.key(3), model, (4,), OBS, 20000, proposal=guide,
                           proposal_args=(0.0, 3.0))
    assert abs(float(ps.log_marginal_likelihood()) - log_z) < 0.05
    t = mean_ztest([float(ps.expectation(lambda tr: tr.choices["mu"]))], m, se=np.sqrt(v / float(ps.ess())), z=5)
    assert t.passed, t


def test_sir_draws_follow_the_posterior():
    _, m, v = exact(YS)
    trs = importance.sir(jax.random.key(4), model, (4,), OBS, 20000, n_samples=2000)
    x = np.asarray(trs.choices["mu"])
    assert x.shape == (2000,)
    # resampled draws are correlated through the weights: allow for the ESS
    assert abs(x.mean() - m) < 5 * np.sqrt(v / 1000)
    assert abs(x.var() - v) < 0.25 * v


def test_dead_particles_do_not_produce_nan():
    @ppl.gen
    def bounded():
        x = ppl.uniform(0.0, 1.0) @ "x"
        return ppl.uniform(x, x + 1.0) @ "y"

    ps = importance.sample(jax.random.key(5), bounded, (), ppl.ChoiceMap({"y": 5.0}), 50)
    assert float(ps.log_marginal_likelihood()) == -np.inf
    assert float(ps.ess()) == 0.0
    w = np.asarray(ps.normalized_weights())
    assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-5
    assert bool(ps.all_dead())
    rs = ps.resample(jax.random.key(6))
    assert bool(rs.dead) and float(rs.log_marginal_likelihood()) == -np.inf
    assert np.all(np.isfinite(np.asarray(rs.traces.choices["x"])))


def test_same_key_same_bits_and_no_recompilation():
    a = importance.sample(jax.random.key(7), model, (4,), OBS, 256)
    b = importance.sample(jax.random.key(7), model, (4,), OBS, 256)
    np.testing.assert_array_equal(np.asarray(a.log_weights), np.asarray(b.log_weights))
    a.log_marginal_likelihood().block_until_ready()  # warm the eager ops
    new_obs, k = ppl.ChoiceMap({"ys": YS + 1.0}), jax.random.key(8)
    with CompileCounter() as cc:
        c = importance.sample(k, model, (4,), new_obs, 256)
        c.log_marginal_likelihood().block_until_ready()
    assert cc.count == 0, cc.names


def test_proposal_and_model_errors_name_the_address():
    @ppl.gen
    def bad_guide():
        return ppl.normal(0.0, 1.0) @ "ys"

    with pytest.raises(ppl.ModelError, match="ys"):
        importance.sample(jax.random.key(0), model, (4,), OBS, 8, proposal=bad_guide)
