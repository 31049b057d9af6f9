"""Particle filter against exact answers: Kalman filter (LG-SSM) and the HMM forward algorithm."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import smc
from inference.diagnostics.checks import CompileCounter, mean_ztest, unbiasedness_ztest
from _exact_ssm import (
    HMM_INIT_STATE, hmm_forward, hmm_step, kalman, lg_args, lgssm, simulate_hmm, simulate_lgssm,
)

FULL = os.environ.get("PPL_FULL_STATS") == "1"
A, Q, R = 0.9, 1.0, 0.7
T = 25
XS, YS = simulate_lgssm(0, T, A, Q, R)
OBS = ppl.ChoiceMap({"y": jnp.asarray(YS, jnp.float32)})
MODEL = lgssm(T)
ARGS = lg_args(A, Q, R)
LL, FM, FV, _, _ = kalman(YS, A, Q, R)


def _runs(n_runs, n, seed=0, **kw):
    keys = jax.random.split(jax.random.key(seed), n_runs)
    f = jax.jit(jax.vmap(lambda k: smc.particle_filter(k, MODEL, ARGS, OBS, n, history=False, **kw).log_z))
    return np.asarray(f(keys), np.float64)


@pytest.mark.statistical
@pytest.mark.parametrize("scheme", ["systematic", "multinomial", "stratified", "residual"])
def test_evidence_is_unbiased(scheme):
    lz = _runs(400 if FULL else 150, 64, seed=1, resampling=scheme)
    t = unbiasedness_ztest(lz, LL)
    assert t.passed, t
    assert np.all(np.isfinite(lz))


@pytest.mark.statistical
def test_log_evidence_bias_shrinks_with_particles():
    small, big = _runs(100, 32, seed=2), _runs(100, 512, seed=3)
    b_small, b_big = small.mean() - LL, big.mean() - LL
    se = np.sqrt(small.var() / 100 + big.var() / 100)
    assert b_small < 0  # Jensen: E[log Z-hat] <= log Z
    assert abs(b_big) < abs(b_small) - 2 * se
    assert big.std() < small.std()


def test_filtering_means_match_kalman():
    res = smc.particle_filter(jax.random.key(4), MODEL, ARGS, OBS, 4000)
    m = np.asarray(res.filtered_mean(lambda ch: ch["x"]))
    ess = np.asarray(res.ess)
    se = np.sqrt(FV / ess)
    assert np.all(np.abs(m - FM) < 5 * se + 1e-3), np.max(np.abs(m - FM) / se)
    assert abs(float(res.log_z) - LL) < 0.3
    assert res.choices["x"].shape == (T, 4000) and "y" not in res.choices


@pytest.mark.statistical
def test_hmm_forward_algorithm():
    zs, ys = simulate_hmm(5, 30)
    ll, marg = hmm_forward(ys)
    model = ppl.scan(hmm_step, length=30)
    obs = ppl.ChoiceMap({"y": jnp.asarray(ys, jnp.float32)})
    keys = jax.random.split(jax.random.key(6), 40)
    f = jax.jit(jax.vmap(lambda k: smc.particle_filter(k, model, (jnp.int32(HMM_INIT_STATE), None), obs, 500)))
    res = f(keys)
    lz = np.asarray(res.log_z, np.float64)
    assert unbiasedness_ztest(lz, ll).passed
    assert abs(lz.mean() - ll) < 0.1
    # filtering marginals: average the per-run estimates; tolerance from their run-to-run spread
    est = jax.vmap(lambda r: r.filtered_mean(lambda ch: jax.nn.one_hot(ch["z"], 3)))(res)  # (runs, T, 3)
    est = np.asarray(est, np.float64)
    mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(est.shape[0])
    assert np.all(np.abs(mean - marg) < 5 * se + 2e-3), np.max(np.abs(mean - marg) / (se + 1e-9))


@pytest.mark.statistical
def test_guided_proposal_locally_optimal():
    @ppl.gen
    def optimal(carry, _, obs_t):
        x, a, q, r = carry
        y = obs_t["y"]
        var = 1.0 / (1.0 / q**2 + 1.0 / r**2)
        mean = var * (a * x / q**2 + y / r**2)
        return ppl.normal(mean, jnp.sqrt(var)) @ "x"

    lz = _runs(60, 64, seed=7, proposal=optimal)
    boot = _runs(60, 64, seed=8)
    assert unbiasedness_ztest(lz, LL).passed
    assert lz.std() < 0.5 * boot.std()  # the optimal proposal has much lower variance


def test_adaptive_resampling():
    res = smc.particle_filter(jax.random.key(9), MODEL, ARGS, OBS, 500, ess_threshold=0.3)
    n_res = int(res.resampled.sum())
    assert 0 < n_res < T - 1
    assert not bool(res.resampled[0])
    assert abs(float(res.log_z) - LL) < 1.0


def test_no_recompilation_with_new_data_and_same_key_same_bits():
    a = smc.particle_filter(jax.random.key(11), MODEL, ARGS, OBS, 128)
    b = smc.particle_filter(jax.random.key(11), MODEL, ARGS, OBS, 128)
    np.testing.assert_array_equal(np.asarray(a.choices["x"]), np.asarray(b.choices["x"]))
    assert float(a.log_z) == float(b.log_z)
    new_obs = ppl.ChoiceMap({"y": jnp.asarray(YS[::-1].copy(), jnp.float32)})
    new_args, k = lg_args(0.5, 1.2, 0.9), jax.random.key(12)
    with CompileCounter() as cc:
        c = smc.particle_filter(k, MODEL, new_args, new_obs, 128)
        jax.block_until_ready(c)
    assert cc.count == 0, cc.names
    assert float(c.log_z) != float(a.log_z)


def test_all_particles_dead_is_a_flag_not_nan():
    @ppl.gen
    def step(x, _):
        x = ppl.normal(x, 1.0) @ "x"
        ppl.uniform(x - 1.0, x + 1.0) @ "y"
        return x, None

    model = ppl.scan(step, length=5)
    obs = ppl.ChoiceMap({"y": jnp.array([0.0, 0.1, 50.0, 0.0, 0.0])})
    res = smc.particle_filter(jax.random.key(0), model, (0.0, None), obs, 50)
    assert bool(res.all_dead)
    assert float(res.log_z) == -np.inf
    assert not np.any(np.isnan(np.asarray(res.log_z_steps)))
    assert not np.any(np.isnan(np.asarray(res.choices["x"])))
    with ppl.debug():  # the first -inf log density (or the dead particle system) is reported
        with pytest.raises(ppl.NonFiniteError):
            jax.block_until_ready(smc.particle_filter(jax.random.key(0), model, (0.0, None), obs, 50))


def test_genealogy_and_trajectories():
    res = smc.particle_filter(jax.random.key(13), MODEL, ARGS, OBS, 128)
    paths = res.trajectories()
    assert paths["x"].shape == (128, T)
    # the last column of every path is the final particle itself
    np.testing.assert_array_equal(np.asarray(paths["x"][:, -1]), np.asarray(res.choices["x"][-1]))
    traj = res.sample_trajectory(jax.random.key(14))
    assert traj["x"].shape == (T,)


def test_errors():
    with pytest.raises(ppl.ModelError, match="ppl.scan"):
        smc.particle_filter(jax.random.key(0), LG_NOT_SCAN, (), OBS, 10)
    with pytest.raises(ppl.ShapeError, match="leading time axis"):
        smc.particle_filter(jax.random.key(0), MODEL, ARGS, ppl.ChoiceMap({"y": jnp.zeros(3)}), 10)


@ppl.gen
def LG_NOT_SCAN():
    return ppl.normal(0.0, 1.0) @ "x"
