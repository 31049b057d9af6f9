"""Exact inference for the test state-space models (numpy, float64).

- 1-D linear-Gaussian SSM: ``x_t ~ N(a x_{t-1}, q^2)`` (``x_0`` given as the initial carry),
  ``y_t ~ N(x_t, r^2)``: Kalman filter (log likelihood, filtering moments) and RTS smoother.
- Discrete HMM: forward algorithm (log likelihood, filtering marginals).
Also the ppl models of the same SSMs, and simulators.
"""

import jax
import jax.numpy as jnp
import numpy as np

import ppl


def lgssm_step_fn():
    @ppl.gen
    def step(carry, _):
        x, a, q, r = carry
        x = ppl.normal(a * x, q) @ "x"
        ppl.normal(x, r) @ "y"
        return (x, a, q, r), None

    return step


LG_STEP = lgssm_step_fn()


def lgssm(T):
    """The LG-SSM as ``ppl.scan``; args ``((x0, a, q, r), None)``."""
    return ppl.scan(LG_STEP, length=T)


def lg_args(a, q, r, x0=0.0):
    return ((jnp.float32(x0), jnp.float32(a), jnp.float32(q), jnp.float32(r)), None)


def simulate_lgssm(seed, T, a, q, r, x0=0.0):
    rng = np.random.default_rng(seed)
    xs, ys = np.zeros(T), np.zeros(T)
    x = x0
    for t in range(T):
        x = a * x + q * rng.normal()
        xs[t] = x
        ys[t] = x + r * rng.normal()
    return xs, ys


def kalman(ys, a, q, r, x0=0.0):
    """Kalman filter: (log likelihood, filtering means, filtering variances, predictive m, P)."""
    ys = np.asarray(ys, np.float64)
    m, P = x0, 0.0
    ll = 0.0
    fm, fv, pm, pv = [], [], [], []
    for y in ys:
        mp, Pp = a * m, a * a * P + q * q
        S = Pp + r * r
        ll += -0.5 * (np.log(2 * np.pi * S) + (y - mp) ** 2 / S)
        K = Pp / S
        m, P = mp + K * (y - mp), (1 - K) * Pp
        fm.append(m), fv.append(P), pm.append(mp), pv.append(Pp)
    return ll, np.array(fm), np.array(fv), np.array(pm), np.array(pv)


def rts_smoother(ys, a, q, r, x0=0.0):
    """Rauch-Tung-Striebel smoother: (smoothing means, smoothing variances)."""
    _, fm, fv, pm, pv = kalman(ys, a, q, r, x0)
    T = len(fm)
    sm, sv = fm.copy(), fv.copy()
    for t in range(T - 2, -1, -1):
        G = fv[t] * a / pv[t + 1]
        sm[t] = fm[t] + G * (sm[t + 1] - pm[t + 1])
        sv[t] = fv[t] + G * G * (sv[t + 1] - pv[t + 1])
    return sm, sv


# ------------------------------------------------------------------------------ discrete HMM
HMM_TRANS = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
HMM_MEANS = np.array([-2.0, 0.0, 2.0])
HMM_SD = 1.0
HMM_INIT_STATE = 1  # the initial carry: state before the first step


@ppl.gen
def hmm_step(z, _):
    z = ppl.categorical(probs=jnp.asarray(HMM_TRANS, jnp.float32)[z]) @ "z"
    ppl.normal(jnp.asarray(HMM_MEANS, jnp.float32)[z], HMM_SD) @ "y"
    return z, None


def simulate_hmm(seed, T):
    rng = np.random.default_rng(seed)
    z = HMM_INIT_STATE
    zs, ys = np.zeros(T, int), np.zeros(T)
    for t in range(T):
        z = rng.choice(3, p=HMM_TRANS[z])
        zs[t] = z
        ys[t] = HMM_MEANS[z] + HMM_SD * rng.normal()
    return zs, ys


def hmm_forward(ys):
    """Forward algorithm: (log likelihood, filtering marginals (T, K))."""
    from scipy.stats import norm

    alpha = np.eye(3)[HMM_INIT_STATE]
    ll = 0.0
    out = []
    for y in np.asarray(ys, np.float64):
        pred = alpha @ HMM_TRANS
        joint = pred * norm.pdf(y, HMM_MEANS, HMM_SD)
        c = joint.sum()
        ll += np.log(c)
        alpha = joint / c
        out.append(alpha)
    return ll, np.array(out)
