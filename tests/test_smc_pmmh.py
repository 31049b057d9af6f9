"""PMMH on the LG-SSM's transition coefficient vs a grid posterior with the exact Kalman likelihood."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import smc
from inference.diagnostics.checks import batch_means_se

from _lg_param import (  # the static-parameter problem shared with the other particle-MCMC test
    FULL, MODEL, OBS, YS, args_fn, grid_posterior, prior,
)


@pytest.mark.statistical
def test_pmmh_matches_grid_posterior():
    m, s = grid_posterior()
    n = 6000 if FULL else 2500
    out = smc.pmmh(jax.random.key(0), prior, MODEL, args_fn, OBS, n_particles=100, n_samples=n,
                   step_size=1.5 * s, burn_in=200)
    a = np.asarray(out.samples["a"], np.float64)
    assert a.shape == (n,)
    rate = float(out.acceptance_rate())
    assert 0.1 < rate < 0.9, rate
    mcse = batch_means_se(a, 25)
    assert abs(a.mean() - m) < 4.5 * mcse, (a.mean(), m, mcse)
    # posterior sd within the accuracy of a correlated-sample sd estimate
    assert abs(a.std() - s) < 0.2 * s, (a.std(), s)


def test_pmmh_runs_and_does_not_recompile():
    from inference.diagnostics.checks import CompileCounter

    out = smc.pmmh(jax.random.key(1), prior, MODEL, args_fn, OBS, 30, 20, step_size=0.2)
    jax.block_until_ready(out)
    new_obs, k = ppl.ChoiceMap({"y": jnp.asarray(YS[::-1].copy(), jnp.float32)}), jax.random.key(2)
    with CompileCounter() as cc:
        jax.block_until_ready(smc.pmmh(k, prior, MODEL, args_fn, new_obs, 30, 20, step_size=0.3))
    assert cc.count == 0, cc.names
    assert np.all(np.isfinite(np.asarray(out.log_z)))


@pytest.mark.statistical
def test_pmmh_multichain_is_an_mcmc_result_and_matches_grid_posterior():
    from inference.mcmc import MCMCResult

    m, s = grid_posterior()
    n = 2000 if FULL else 400
    out = smc.pmmh(jax.random.key(3), prior, MODEL, args_fn, OBS, n_particles=60, n_samples=n, step_size=1.5 * s,
                   burn_in=100, n_chains=4)
    assert isinstance(out, MCMCResult) and isinstance(out, smc.PMMHChains)
    assert out.choices["a"].shape == (4, n) and out.log_z.shape == (4, n)
    rate = np.asarray(out.acceptance_rate())
    assert rate.shape == (4,) and np.all((rate > 0.05) & (rate < 0.95)), rate
    assert dict(out.to_arviz().posterior["a"].sizes) == {"chain": 4, "draw": n}
    row = out.summary().loc["a"]
    assert row["r_hat"] < 1.05, row
    assert abs(row["mean"] - m) < 4 * row["mcse_mean"], (row["mean"], m, row["mcse_mean"])
    assert not np.array_equal(np.asarray(out.choices["a"][0]), np.asarray(out.choices["a"][1]))


def test_pmmh_n_chains_must_be_positive():
    with pytest.raises(ppl.ModelError, match="n_chains"):
        smc.pmmh(jax.random.key(0), prior, MODEL, args_fn, OBS, 10, 5, n_chains=0)
