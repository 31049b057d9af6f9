"""Amortized proposals (inference.amortized): forward-KL training on simulations, use in IS and SMC.

Held-out data sets are simulated from the prior with fixed seeds. The hierarchical normal model with
known scales is jointly Gaussian, so its evidence and posterior are exact (computed in float64
below). Statistical tests run at reduced size unless PPL_FULL_STATS=1.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import ppl
from inference import amortized, importance, smc

FULL = os.environ.get("PPL_FULL_STATS") == "1"
J, K, S0, TAU, SIGMA = 4, 6, 5.0, 1.0, 1.0


@ppl.gen
def hier():
    mu = ppl.normal(0.0, S0) @ "mu"
    theta = ppl.normal(jnp.full(J, mu), TAU) @ "theta"
    ppl.normal(jnp.broadcast_to(theta[:, None], (J, K)), SIGMA) @ "y"


@ppl.gen
def groups(m):
    mu = ppl.normal(0.0, S0) @ "mu"
    for j in range(m):
        th = ppl.normal(mu, TAU) @ f"theta{j}"
        ppl.normal(jnp.full(K, th), SIGMA) @ f"y{j}"


def group_features(obs):
    m = 0
    while f"y{m}" in obs:
        m += 1
    return jnp.stack([obs[f"y{j}"] for j in range(m)])[..., None]


def exact(y, tau=TAU):
    """Exact log evidence, posterior mean and sd of (mu, theta_1..theta_m) for y of shape (m, K),
    given the group scale ``tau``."""
    y = np.asarray(y, np.float64)
    m = y.shape[0]
    C = np.full((m + 1, m + 1), S0 ** 2) + np.diag([0.0] + [tau ** 2] * m)      # prior cov of (mu, theta)
    A = np.zeros((m * K, m + 1))
    for j in range(m):
        A[j * K:(j + 1) * K, j + 1] = 1.0
    cov_y = A @ C @ A.T + SIGMA ** 2 * np.eye(m * K)
    yv = y.reshape(-1)
    _, logdet = np.linalg.slogdet(cov_y)
    log_z = -0.5 * (yv @ np.linalg.solve(cov_y, yv) + logdet + m * K * np.log(2 * np.pi))
    post_cov = np.linalg.inv(np.linalg.inv(C) + A.T @ A / SIGMA ** 2)
    post_mean = post_cov @ A.T @ yv / SIGMA ** 2
    return log_z, post_mean, np.sqrt(np.diag(post_cov))


@pytest.fixture(scope="module")
def trained():
    q = amortized.deep_sets_proposal(lambda o: o["y"][..., None], {"mu": "real"}, {"theta": "real"}, hidden=16)
    p0 = q.init_params(jax.random.key(0), hier, (), ["y"], n_calibrate=256)
    res = amortized.train(jax.random.key(1), hier, (), ["y"], q, p0, optax.adam(3e-3), 240, 64, chunk_size=20,
                          progress=False)
    return q, res, p0


@pytest.fixture(scope="module")
def held_out():
    _, x = amortized.simulate_pairs(jax.random.key(2024), hier, (), ["y"], 4)
    return x["y"]


def test_simulate_pairs_split_and_determinism():
    z, x = amortized.simulate_pairs(jax.random.key(0), hier, (), ["y"], 50)
    assert z["mu"].shape == (50,) and z["theta"].shape == (50, J) and x["y"].shape == (50, J, K)
    assert "y" not in z and "mu" not in x
    z2, x2 = amortized.simulate_pairs(jax.random.key(0), hier, (), ppl.ChoiceMap({"y": jnp.zeros((J, K))}), 50)
    assert np.array_equal(z["theta"], z2["theta"]) and np.array_equal(x["y"], x2["y"])
    # the pairs are draws from the joint: E[y_jk | theta_j] = theta_j
    assert abs(float(jnp.mean(x["y"] - z["theta"][..., None]))) < 4 * SIGMA / np.sqrt(50 * J * K)


def test_training_reduces_forward_kl(trained):
    q, res, p0 = trained
    assert res.losses.shape == (240,)
    assert res.losses[-50:].mean() < res.losses[:10].mean() - 5.0
    # same key, same run: a shorter run reproduces the first steps' losses bit for bit
    short = amortized.train(jax.random.key(1), hier, (), ["y"], q, p0, optax.adam(3e-3), 20, 64, chunk_size=20,
                            progress=False)
    assert np.array_equal(short.losses, res.losses[:20])


def test_ess_gain_over_prior(trained, held_out):
    """ESS per particle with the trained proposal is >= 10x the prior's on every held-out data set."""
    q, res, _ = trained
    n = 1000
    for i in range(held_out.shape[0]):
        obs = ppl.ChoiceMap({"y": held_out[i]})
        ps = importance.sample(jax.random.key(10 + i), hier, (), obs, n, proposal=q.proposal,
                               proposal_args=(res.params, obs))
        prior = importance.sample(jax.random.key(10 + i), hier, (), obs, n)
        assert float(ps.ess()) / n >= 10 * float(prior.ess()) / n, (i, float(ps.ess()), float(prior.ess()))
        assert float(ps.ess()) / n > 0.1


def test_log_z_unbiased(trained, held_out):
    """Z-hat / Z has mean 1 over independent IS runs (z-test, 4 standard errors), vmapped in one call."""
    q, res, _ = trained
    reps, n = (2000, 10) if FULL else (400, 10)

    def one(key, y):
        obs = ppl.ChoiceMap({"y": y})
        return importance.sample(key, hier, (), obs, n, proposal=q.proposal,
                                 proposal_args=(res.params, obs)).log_marginal_likelihood()

    run = jax.jit(jax.vmap(one, in_axes=(0, None)))
    for i in range(2):
        log_z, _, _ = exact(held_out[i])
        ratio = np.exp(np.asarray(run(jax.random.split(jax.random.key(100 + i), reps), held_out[i]), np.float64)
                       - log_z)
        se = ratio.std(ddof=1) / np.sqrt(reps)
        assert abs(ratio.mean() - 1.0) < 4 * se, (i, ratio.mean(), se)
        assert se < 0.1      # the test has power: Z-hat is concentrated


def test_posterior_mean_matches_exact(trained, held_out):
    q, res, _ = trained
    n = 4000
    for i in range(2):
        obs = ppl.ChoiceMap({"y": held_out[i]})
        _, mean, sd = exact(held_out[i])
        ps = importance.sample(jax.random.key(200 + i), hier, (), obs, n, proposal=q.proposal,
                               proposal_args=(res.params, obs))
        est = np.concatenate([[float(ps.expectation(lambda tr: tr.choices["mu"]))],
                              np.asarray(ps.expectation(lambda tr: tr.choices["theta"]))])
        tol = 4 * sd / np.sqrt(float(ps.ess()))
        assert np.all(np.abs(est - mean) < tol), (est, mean, tol)


@pytest.mark.statistical
def test_smc_init_and_extend_with_amortized_proposal():
    """Groups arrive one by one: smc.init with q.proposal, smc.extend with q.extend_proposal; Z-hat unbiased."""
    q = amortized.deep_sets_proposal(group_features, {"mu": "real"}, {"theta{}": "real"}, hidden=16)
    p0 = q.init_params(jax.random.key(3), groups, (3,), [f"y{j}" for j in range(3)], n_calibrate=256)
    params = amortized.train(jax.random.key(4), groups, (3,), [f"y{j}" for j in range(3)], q, p0, optax.adam(3e-3),
                             200, 64, progress=False).params
    _, x = amortized.simulate_pairs(jax.random.key(5), groups, (4,), [f"y{j}" for j in range(4)], 1)
    ys = [x[f"y{j}"][0] for j in range(4)]
    obs = [ppl.ChoiceMap({f"y{j}": ys[j] for j in range(m)}) for m in range(5)]
    n = 50

    def run(key):
        k = jax.random.split(key, 5)
        ps = smc.init(k[0], groups, (2,), obs[2], n, proposal=q.proposal, proposal_args=(params, obs[2]))
        ess = [ps.ess()]
        for m in (3, 4):
            ps = smc.resample_if(k[m], ps, 0.5)
            ps = smc.extend(k[m - 2], ps, (m,), ppl.ChoiceMap({f"y{m - 1}": ys[m - 1]}), proposal=q.extend_proposal,
                            proposal_args=(params, obs[m]))
            ess.append(ps.ess())
        return ps.log_marginal_likelihood(), jnp.stack(ess), ps.traces.choices["theta3"]

    reps = 800 if FULL else 200
    log_zs, ess, theta3 = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(6), reps))
    assert theta3.shape == (reps, n)
    assert float(ess.mean()) > 0.3 * n
    log_z, _, _ = exact(np.stack(ys))
    ratio = np.exp(np.asarray(log_zs, np.float64) - log_z)
    se = ratio.std(ddof=1) / np.sqrt(reps)
    assert abs(ratio.mean() - 1.0) < 4 * se and se < 0.1, (ratio.mean(), se)


def test_errors_name_the_problem():
    with pytest.raises(ppl.ModelError, match="'z'"):
        amortized.simulate_pairs(jax.random.key(0), hier, (), ["z"], 4)
    with pytest.raises(ppl.ModelError, match="support"):
        amortized.deep_sets_proposal(lambda o: o["y"], {"mu": "bounded"})
    q = amortized.deep_sets_proposal(lambda o: o["y"][..., None], {"mu": "real"}, hidden=4)
    p0 = q.init_params(jax.random.key(0), hier, (), ["y"], n_calibrate=16)
    with pytest.raises(ppl.ModelError, match="theta"):      # the proposal misses a latent
        amortized.train(jax.random.key(0), hier, (), ["y"], q, p0, optax.adam(1e-3), 2, 4, progress=False)
    with pytest.raises(ppl.ModelError, match="'nu'"):
        amortized.deep_sets_proposal(lambda o: o["y"][..., None], {"nu": "real"}).init_params(
            jax.random.key(0), hier, (), ["y"], n_calibrate=4)

    @ppl.gen
    def leaky(params, obs):
        ppl.normal(0.0, 1.0) @ "mu"
        ppl.normal(jnp.zeros(J), 1.0) @ "theta"
        ppl.normal(jnp.zeros((J, K)), 1.0) @ "y"

    with pytest.raises(ppl.ModelError, match="'y'.*observed"):
        amortized.train(jax.random.key(0), hier, (), ["y"], leaky, {"a": jnp.zeros(())}, optax.adam(1e-3), 2, 4,
                        progress=False)


def exact_tau_posterior(y, a=8.0, b=8.0):
    """Exact posterior means of ``mu`` and ``tau`` when tau ~ gamma(a, b) (rate b): given tau the
    model is Gaussian (:func:`exact`), so p(tau | y) is prior(tau) Z(tau) normalised on a fine grid."""
    taus = np.linspace(1e-3, 6.0, 3000)
    fits = [exact(y, t) for t in taus]
    logw = stats.gamma.logpdf(taus, a, scale=1.0 / b) + np.array([f[0] for f in fits])
    w = np.exp(logw - logw.max())
    w /= w.sum()
    return {"mu": float(np.sum(w * np.array([f[1][0] for f in fits]))), "tau": float(np.sum(w * taus))}


@pytest.mark.statistical
def test_positive_latent_posterior_mean_matches_exact():
    """tau ~ gamma (a positive latent, log-normal proposal): IS posterior means of mu and tau match
    the exact posterior (quadrature over tau; the rest is Gaussian given tau) within 4 standard
    errors sd/sqrt(ESS)."""

    @ppl.gen
    def hier_tau():
        mu = ppl.normal(0.0, S0) @ "mu"
        tau = ppl.gamma(8.0, 8.0) @ "tau"
        theta = ppl.normal(jnp.full(J, mu), tau) @ "theta"
        ppl.normal(jnp.broadcast_to(theta[:, None], (J, K)), SIGMA) @ "y"

    q = amortized.deep_sets_proposal(lambda o: o["y"][..., None], {"mu": "real", "tau": "positive"},
                                     {"theta": "real"}, hidden=24)
    p0 = q.init_params(jax.random.key(7), hier_tau, (), ["y"], n_calibrate=256)
    params = amortized.train(jax.random.key(8), hier_tau, (), ["y"], q, p0, optax.adam(3e-3),
                             1500 if FULL else 400, 64, progress=False).params
    _, x = amortized.simulate_pairs(jax.random.key(9), hier_tau, (), ["y"], 1)
    obs = ppl.ChoiceMap({"y": x["y"][0]})
    ps = importance.sample(jax.random.key(10), hier_tau, (), obs, 20000 if FULL else 4000, proposal=q.proposal,
                           proposal_args=(params, obs))
    truth = exact_tau_posterior(x["y"][0])
    for addr in ("mu", "tau"):
        is_mean = float(ps.expectation(lambda tr: tr.choices[addr]))
        is_sd = float(jnp.sqrt(ps.expectation(lambda tr: tr.choices[addr] ** 2) - is_mean ** 2))
        err = is_sd / np.sqrt(float(ps.ess()))
        assert abs(is_mean - truth[addr]) < 4 * err, (addr, is_mean, truth[addr], err)
