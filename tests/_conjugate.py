"""Conjugate models with exact posteriors and the moment check shared by the MCMC tests."""

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from inference.diagnostics import mcmc as dg

Z = 4.0  # z-score threshold for all MCSE-based checks (fixed seeds)


# ------------------------------------------------------------------------------ models
@ppl.gen
def normal_normal(ys):
    mu = ppl.normal(0.0, 2.0) @ "mu"
    ppl.normal(jnp.full(ys.shape, mu), 1.0) @ "ys"


def normal_normal_exact(ys, prior_sd=2.0, sd=1.0):
    prec = 1 / prior_sd**2 + len(ys) / sd**2
    return float(np.sum(ys) / sd**2 / prec), float(1 / prec)


@ppl.gen
def beta_binomial(n):
    p = ppl.beta(2.0, 3.0) @ "p"
    ppl.binomial(n, p) @ "k"


@ppl.gen
def gamma_poisson(n):
    lam = ppl.gamma(3.0, 1.0) @ "lam"
    ppl.poisson(jnp.full((n,), lam)) @ "ys"


@ppl.gen
def std_normal_2d():
    return ppl.normal(jnp.zeros(2), 1.0) @ "x"


YS = jnp.array([0.3, 1.2, 0.8, 2.1, 1.5])
K_OBS, N_BIN = 7, 20  # beta-binomial: posterior Beta(2 + 7, 3 + 13)
POIS = jnp.array([2, 4, 3, 5, 1, 3])  # gamma-poisson: posterior Gamma(3 + 18, 1 + 6)


def nn_trace():
    return normal_normal.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]


def bb_trace():
    return beta_binomial.generate(jax.random.key(0), ppl.ChoiceMap({"k": K_OBS}), N_BIN)[0]


def gp_trace():
    return gamma_poisson.generate(jax.random.key(0), ppl.ChoiceMap({"ys": POIS}), len(POIS))[0]


def check_moments(x, mean, var, z=Z):
    """Posterior mean and variance within ``z`` MCSE (ESS-based) of the exact values."""
    x = np.asarray(x, dtype=float)
    ok_m, z_m = dg.mean_within_mcse(x, mean, z)
    ok_v, z_v = dg.mean_within_mcse((x - mean) ** 2, var, z)
    assert ok_m, f"mean {x.mean():.4f} vs exact {mean:.4f} (z={z_m:.2f})"
    assert ok_v, f"variance {((x - mean) ** 2).mean():.4f} vs exact {var:.4f} (z={z_v:.2f})"
