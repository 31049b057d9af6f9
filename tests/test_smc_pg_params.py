"""Particle Gibbs with static-parameter updates by an MCMC kernel, against the exact posterior of the
LG-SSM's transition coefficient (grid posterior with the Kalman likelihood)."""

import jax
import numpy as np
import pytest

import ppl
from inference import mcmc, smc
from inference.diagnostics.checks import batch_means_se

from _lg_param import (  # the static-parameter problem shared with the other particle-MCMC test
    FULL, MODEL, OBS, T, args_fn, grid_posterior, prior,
)


KERNELS = {
    "rw": lambda: mcmc.rw(ppl.select("params"), 0.3, adapt=False),
    "hmc": lambda: mcmc.hmc(ppl.select("params"), 0.1, 5),
    "mh": lambda: mcmc.mh(ppl.select("params")),
}


@pytest.mark.statistical
@pytest.mark.parametrize("name", ["rw", "hmc", "mh"])
def test_particle_gibbs_with_param_kernel_matches_grid_posterior(name):
    m, s = grid_posterior()
    n_iter, burn = (6000, 500) if FULL else (1500, 200)
    out = smc.particle_gibbs(jax.random.key(4), MODEL, None, OBS, 20, n_iter, prior=prior, args_fn=args_fn,
                             param_kernel=KERNELS[name]())
    a = np.asarray(out.params["a"], np.float64)
    assert a.shape == (n_iter,) and out.references["x"].shape == (n_iter, T)
    rate = float(np.mean(np.asarray(out.info.acceptance_rate)))
    assert rate > 0.05, rate
    a = a[burn:]
    mcse = batch_means_se(a, 25)
    assert abs(a.mean() - m) < 4 * mcse, (a.mean(), m, mcse)


def test_particle_gibbs_param_arguments_checked():
    with pytest.raises(ppl.ModelError, match="args_fn"):
        smc.particle_gibbs(jax.random.key(0), MODEL, None, OBS, 4, 3, prior=prior,
                           param_kernel=mcmc.rw(ppl.select("params")))
    with pytest.raises(ppl.ModelError, match="MCMC kernel"):
        smc.particle_gibbs(jax.random.key(0), MODEL, None, OBS, 4, 3, prior=prior, args_fn=args_fn,
                           param_kernel=lambda k, tr: tr)
