"""Conditional SMC / particle Gibbs and the backward-sampling smoother against the Kalman smoother."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import smc
from inference.diagnostics.checks import batch_means_se
from _exact_ssm import kalman, lg_args, lgssm, rts_smoother, simulate_lgssm

FULL = os.environ.get("PPL_FULL_STATS") == "1"
A, Q, R = 0.9, 1.0, 0.7
T = 20
XS, YS = simulate_lgssm(21, T, A, Q, R)
OBS = ppl.ChoiceMap({"y": jnp.asarray(YS, jnp.float32)})
MODEL = lgssm(T)
ARGS = lg_args(A, Q, R)
SM, SV = rts_smoother(YS, A, Q, R)


@pytest.mark.parametrize("ancestor_sampling", [True, pytest.param(False, marks=pytest.mark.statistical)])
def test_particle_gibbs_smoothing_means_match_kalman(ancestor_sampling):
    n_iter = 3000 if FULL else 800
    n = 15 if ancestor_sampling else 40
    pg = smc.particle_gibbs(jax.random.key(1), MODEL, ARGS, OBS, n, n_iter, ancestor_sampling=ancestor_sampling)
    xs = np.asarray(pg.references["x"], np.float64)[100:]  # burn-in
    assert xs.shape == (n_iter - 100, T)
    mean = xs.mean(0)
    se = np.array([batch_means_se(xs[:, t], 20) for t in range(T)])
    z = (mean - SM) / np.maximum(se, 1e-3)
    assert np.all(np.abs(z) < 4.5), z
    # smoothing variances too (looser: relative error of a variance estimate)
    assert np.all(np.abs(xs.var(0) - SV) < 0.35 * SV + 0.05)
    assert np.all(np.isfinite(np.asarray(pg.log_z)))


def test_backward_sampling_smoother_matches_kalman():
    res = smc.particle_filter(jax.random.key(2), MODEL, ARGS, OBS, 1000)
    m = 400
    paths = smc.backward_sample(jax.random.key(3), MODEL, ARGS, OBS, res, m)
    xs = np.asarray(paths["x"], np.float64)
    assert xs.shape == (m, T)
    se = xs.std(0) / np.sqrt(m)
    assert np.all(np.abs(xs.mean(0) - SM) < 5 * se + 0.05)
    # backward simulation keeps diversity at early times, unlike genealogy tracing
    n_unique_bs = len(np.unique(xs[:, 0]))
    n_unique_gen = len(np.unique(np.asarray(res.trajectories()["x"][:, 0])))
    assert n_unique_bs > n_unique_gen


def test_csmc_keeps_reference_and_is_deterministic():
    ref = ppl.ChoiceMap({"x": jnp.asarray(XS, jnp.float32)})
    out = smc.csmc(jax.random.key(4), MODEL, ARGS, OBS, 8, ref)
    # the reference survives as the last particle at every step
    np.testing.assert_allclose(np.asarray(out.choices["x"][:, -1]), XS, rtol=1e-6)
    out2 = smc.csmc(jax.random.key(4), MODEL, ARGS, OBS, 8, ref)
    np.testing.assert_array_equal(np.asarray(out.reference["x"]), np.asarray(out2.reference["x"]))
    assert out.reference["x"].shape == (T,)


# ---------------------------------------------------------------------------------------------
# Exactness of conditional SMC: start the reference at an EXACT smoothing draw (Kalman backward
# sampler), apply the kernel, and the output must again be an exact smoothing draw.


def smoothing_paths(seed, m, ys=YS, a=A, q=Q, r=R):
    """``m`` exact draws of ``p(x_{1:T} | y_{1:T})`` (numpy float64, shape ``(m, T)``): Kalman filter,
    then backward sampling ``x_t | x_{t+1}, y_{1:t} ~ N(fm_t + G_t (x_{t+1} - a fm_t), fv_t (1 - a G_t))``."""
    _, fm, fv, pm, pv = kalman(ys, a, q, r)
    rng = np.random.default_rng(seed)
    n_t = len(fm)
    x = np.empty((m, n_t))
    x[:, -1] = fm[-1] + np.sqrt(fv[-1]) * rng.standard_normal(m)
    for t in range(n_t - 2, -1, -1):
        g = fv[t] * a / pv[t + 1]
        x[:, t] = fm[t] + g * (x[:, t + 1] - pm[t + 1]) + np.sqrt(fv[t] * (1 - g * a)) * rng.standard_normal(m)
    return x


def smoothing_lag1_cov(ys=YS, a=A, q=Q, r=R):
    """Exact ``Cov(x_t, x_{t+1} | y_{1:T})`` for t = 0..T-2: ``G_t * SV_{t+1}``."""
    _, fm, fv, pm, pv = kalman(ys, a, q, r)
    _, sv = rts_smoother(ys, a, q, r)
    return fv[:-1] * a / pv[1:] * sv[1:]


LAG1 = smoothing_lag1_cov()


def moment_z_scores(xs):
    """z-scores of the per-time mean, second central moment and lag-one cross moment of i.i.d. rows
    ``xs`` (M, T) against the exact smoothing marginals (standard errors from the sample spread)."""
    m = xs.shape[0]
    d = xs - SM
    stats = {"mean": (xs, SM), "var": (d * d, SV), "lag1": (d[:, :-1] * d[:, 1:], LAG1)}
    return {k: (v.mean(0) - truth) / (v.std(0, ddof=1) / np.sqrt(m)) for k, (v, truth) in stats.items()}


def test_exact_smoothing_sampler_matches_rts():
    # the test's reference distribution itself: backward-sampled paths have the RTS moments
    z = moment_z_scores(smoothing_paths(0, 50_000))
    for k, v in z.items():
        assert np.all(np.abs(v) < 4.5), (k, v)


def _csmc_batch(key, refs, n, ancestor_sampling):
    """One CSMC sweep per row of ``refs`` (M, T), vmapped over keys and references."""
    sweep = jax.jit(jax.vmap(lambda k, x: smc.csmc(k, MODEL, ARGS, OBS, n, ppl.ChoiceMap({"x": x}),
                                                   ancestor_sampling=ancestor_sampling)))
    return sweep(jax.random.split(key, refs.shape[0]), jnp.asarray(refs, jnp.float32))


def free_children_z(ancestors, log_weights, slot):
    """z-score of the number of free particles (all but the reference, the last slot) whose ancestor
    is ``slot`` against its conditional expectation ``(N-1) w_slot`` (Binomial given the weights,
    summed over steps t >= 1 and sweeps: a martingale with variance sum (N-1) w (1 - w))."""
    anc = np.asarray(ancestors)  # (M, T, N)
    n = anc.shape[-1]
    lw = np.asarray(log_weights, np.float64)
    w = np.exp(lw - lw.max(-1, keepdims=True))
    p = (w / w.sum(-1, keepdims=True))[:, :-1, slot]  # weights at t-1 of the step-t resampling
    count = (anc[:, 1:, : n - 1] == slot).sum(-1)
    return (count - (n - 1) * p).sum() / np.sqrt(((n - 1) * p * (1 - p)).sum())


def test_csmc_reference_gets_its_share_of_free_children():
    # conditional multinomial resampling: each of the N-1 free particles picks the reference's slot
    # with probability w_ref, so the slot gets (N-1) w_ref free children on average (any slot: (N-1) w).
    # Plain csmc calls with the configuration of the test above share its compiled program.
    n, m = 8, 40
    refs = smoothing_paths(1, m).astype(np.float32)
    outs = [smc.csmc(jax.random.key(100 + i), MODEL, ARGS, OBS, n, ppl.ChoiceMap({"x": jnp.asarray(refs[i])}))
            for i in range(m)]
    anc = np.stack([np.asarray(o.ancestors) for o in outs])
    lw = np.stack([np.asarray(o.log_weights) for o in outs])
    for slot in (n - 1, 0, n // 2):
        z = free_children_z(anc, lw, slot)
        assert abs(z) < 4.5, (slot, z)
    # the reference survives in the last slot; at t = 0 every particle is its own ancestor
    np.testing.assert_array_equal(np.stack([np.asarray(o.choices["x"][:, -1]) for o in outs]), refs)
    assert np.all(anc[:, 0] == np.arange(n))


@pytest.mark.statistical
@pytest.mark.parametrize("n", [2, 8])
@pytest.mark.parametrize("ancestor_sampling", [True, False])
def test_csmc_leaves_exact_smoothing_distribution_invariant(n, ancestor_sampling):
    m = 200_000 if FULL else 20_000
    refs = smoothing_paths(100 + n, m)
    out = _csmc_batch(jax.random.key(12 + n), refs, n, ancestor_sampling)
    xs = np.asarray(out.reference["x"], np.float64)
    assert xs.shape == (m, T)
    for k, v in moment_z_scores(xs).items():
        assert np.all(np.abs(v) < 4.5), (k, v)
    z = free_children_z(out.ancestors, out.log_weights, n - 1)
    assert abs(z) < 4.5, z
    # the kernel moves: the output differs from the input reference for a good share of sweeps
    assert np.mean(np.any(xs != np.asarray(refs, np.float32), axis=1)) > 0.3


@pytest.mark.statistical
@pytest.mark.parametrize("ancestor_sampling", [True, False])
def test_particle_gibbs_chains_from_exact_start_match_kalman(ancestor_sampling):
    # C independent chains started at exact smoothing draws stay exact at every iteration, so each
    # chain's time average has expectation equal to the smoothing moment: a z-test across chains
    c, k, n = (4096, 50, 8) if FULL else (1024, 20, 8)
    refs = jnp.asarray(smoothing_paths(7, c), jnp.float32)
    run = jax.jit(jax.vmap(lambda key, x: smc.particle_gibbs(
        key, MODEL, ARGS, OBS, n, k, init_reference=ppl.ChoiceMap({"x": x}),
        ancestor_sampling=ancestor_sampling).references["x"]))
    xs = np.asarray(run(jax.random.split(jax.random.key(13), c), refs), np.float64)  # (C, K, T)
    assert xs.shape == (c, k, T)
    d = xs - SM
    for name, per_chain, truth in (("mean", xs.mean(1), SM), ("var", (d * d).mean(1), SV),
                                   ("lag1", (d[..., :-1] * d[..., 1:]).mean(1), LAG1)):
        z = (per_chain.mean(0) - truth) / (per_chain.std(0, ddof=1) / np.sqrt(c))
        assert np.all(np.abs(z) < 4.5), (name, z)
