"""The static-parameter problem shared by the PMMH and particle-Gibbs tests: the LG-SSM's
transition coefficient ``a`` with a normal prior, and its exact grid posterior (Kalman likelihood)."""

import os

import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

import ppl
from _exact_ssm import kalman, lgssm, simulate_lgssm

FULL = os.environ.get("PPL_FULL_STATS") == "1"
A, Q, R = 0.7, 1.0, 0.8
T = 30
_, YS = simulate_lgssm(31, T, A, Q, R)
OBS = ppl.ChoiceMap({"y": jnp.asarray(YS, jnp.float32)})
MODEL = lgssm(T)
PRIOR_M, PRIOR_S = 0.3, 0.5


@ppl.gen
def prior():
    return ppl.normal(PRIOR_M, PRIOR_S) @ "a"


def args_fn(a):
    return ((jnp.float32(0.0), a, jnp.float32(Q), jnp.float32(R)), None)


def grid_posterior():
    grid = np.linspace(-1.5, 2.5, 4001)
    lp = norm.logpdf(grid, PRIOR_M, PRIOR_S) + np.array([kalman(YS, a, Q, R)[0] for a in grid])
    p = np.exp(lp - lp.max())
    p /= p.sum()
    m = (grid * p).sum()
    return m, np.sqrt(((grid - m) ** 2 * p).sum())
