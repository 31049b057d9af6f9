"""Conditional SMC / particle Gibbs and the backward-sampling smoother against the Kalman smoother."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import smc
from inference.diagnostics.checks import batch_means_se
from _exact_ssm import lg_args, lgssm, rts_smoother, simulate_lgssm

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
