"""Parameter learning on the LG-SSM converges to the maximum-likelihood values of the exact Kalman likelihood."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

import ppl
from inference import smc
from _exact_ssm import kalman, lgssm, simulate_lgssm

A, Q, R = 0.8, 1.0, 0.5
T = 100
_, YS = simulate_lgssm(41, T, A, Q, R)
OBS = ppl.ChoiceMap({"y": jnp.asarray(YS, jnp.float32)})
MODEL = lgssm(T)
P0 = {"a": 0.3, "log_q": -0.5}


def args_fn(p):
    return ((jnp.float32(0.0), p["a"], jnp.exp(p["log_q"]), jnp.float32(R)), None)


def mle():
    res = minimize(lambda p: -kalman(YS, p[0], np.exp(p[1]), R)[0], [0.5, 0.0])
    return res.x[0], np.exp(res.x[1])


@pytest.mark.parametrize("method,n,steps", [("fisher", 100, 240), ("msc", 20, 480)])
def test_learning_converges_to_kalman_mle(method, n, steps):
    a_mle, q_mle = mle()
    opt = optax.adam(optax.exponential_decay(0.02, steps, 0.1))
    fit = smc.fit_parameters(jax.random.key(0), MODEL, args_fn, P0, OBS, opt, steps, n, method=method)
    av = fit.average(steps // 3)
    a, q = float(av["a"]), float(jnp.exp(av["log_q"]))
    assert abs(a - a_mle) < 0.025, (a, a_mle)
    assert abs(q - q_mle) < 0.05, (q, q_mle)
    assert fit.history["a"].shape == (steps,) and np.all(np.isfinite(np.asarray(fit.log_z)))


@pytest.mark.statistical
def test_fisher_gradient_matches_kalman_gradient():
    """At a point away from the MLE, the Fisher-identity gradient (backward smoother) has the sign and
    size of the exact gradient of the Kalman log likelihood."""
    p = {"a": jnp.float32(0.5), "log_q": jnp.float32(0.0)}
    eps = 1e-4
    exact_a = (kalman(YS, 0.5 + eps, 1.0, R)[0] - kalman(YS, 0.5 - eps, 1.0, R)[0]) / (2 * eps)
    lz, g = smc.fisher_gradient(jax.random.key(1), MODEL, args_fn, p, OBS, 300, smoother="backward", n_paths=100)
    assert abs(float(g["a"]) - exact_a) < 0.15 * abs(exact_a), (float(g["a"]), exact_a)
    assert abs(float(lz) - kalman(YS, 0.5, 1.0, R)[0]) < 6.0  # sd of log Z-hat is ~1.6 here
