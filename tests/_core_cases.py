"""The reference models of the GFI tests (regression, hierarchical normal, mixture, HMM, cond) with
their joint log densities computed independently with scipy; shared by test_core_models.py and
test_core_jit.py."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.stats as st
from scipy.special import log_softmax

import ppl
from ppl import gen

# ---------------------------------------------------------------------------------- models
XS = jnp.linspace(-2.0, 2.0, 7)


@gen
def regression(xs):
    slope = ppl.normal(0.0, 1.0) @ "slope"
    intercept = ppl.normal(0.0, 2.0) @ "intercept"
    noise = ppl.gamma(2.0, 2.0) @ "noise"
    return ppl.normal(slope * xs + intercept, noise) @ "ys"


def regression_logp(ch, xs):
    s, b, n, ys = (np.asarray(ch[a], np.float64) for a in ("slope", "intercept", "noise", "ys"))
    xs = np.asarray(xs, np.float64)
    return (st.norm.logpdf(s, 0, 1) + st.norm.logpdf(b, 0, 2) + st.gamma.logpdf(n, 2.0, scale=1 / 2.0)
            + st.norm.logpdf(ys, s * xs + b, n).sum())


SIGMAS = jnp.array([1.0, 2.0, 0.5, 1.5])


@gen
def group(mu, tau, sigmas):
    theta = ppl.normal(jnp.full(sigmas.shape, mu), tau) @ "theta"
    return ppl.normal(theta, sigmas) @ "y"


@gen
def hierarchical(sigmas):
    mu = ppl.normal(0.0, 5.0) @ "mu"
    tau = ppl.half_normal(2.0) @ "tau"
    return group(mu, tau, sigmas) @ "group"


def hierarchical_logp(ch, sigmas):
    mu, tau = float(ch["mu"]), float(ch["tau"])
    th, y = np.asarray(ch["group", "theta"], np.float64), np.asarray(ch["group", "y"], np.float64)
    return (st.norm.logpdf(mu, 0, 5) + st.halfnorm.logpdf(tau, scale=2.0) + st.norm.logpdf(th, mu, tau).sum()
            + st.norm.logpdf(y, th, np.asarray(sigmas)).sum())


@gen
def comp_lo(scale):
    return ppl.normal(-2.0, scale) @ "x"


@gen
def comp_hi(scale):
    return ppl.normal(3.0, 2.0 * scale) @ "x"


MIX_LOGITS = jnp.log(jnp.array([0.3, 0.7]))


@gen
def mixture(scale):
    x = ppl.mix(MIX_LOGITS, comp_lo, comp_hi)(scale) @ "m"
    return ppl.normal(x, 0.5) @ "obs"


def mixture_logp(ch, scale):
    k, x, obs = int(ch["m", "component"]), float(ch["m", "x"]), float(ch["obs"])
    lw = log_softmax(np.log([0.3, 0.7]))[k]
    lx = st.norm.logpdf(x, -2.0, scale) if k == 0 else st.norm.logpdf(x, 3.0, 2 * scale)
    return lw + lx + st.norm.logpdf(obs, x, 0.5)


TRANS = np.array([[0.9, 0.1], [0.2, 0.8]])
MEANS = np.array([-1.0, 1.0])


@gen
def hmm_step(z, _):
    z = ppl.categorical(logits=jnp.log(jnp.asarray(TRANS))[z]) @ "z"
    ppl.normal(jnp.asarray(MEANS)[z], 0.5) @ "y"
    return z, z


HMM = ppl.scan(hmm_step, length=6)


@gen
def hmm_model(z0):
    return HMM(z0, None) @ "steps"


def hmm_logp(ch, z0):
    zs, ys = np.asarray(ch["steps", "z"]), np.asarray(ch["steps", "y"], np.float64)
    lp, prev = 0.0, int(z0)
    for z, y in zip(zs, ys):
        lp += np.log(TRANS[prev, z]) + st.norm.logpdf(y, MEANS[z], 0.5)
        prev = int(z)
    return lp


@gen
def branch_right(mu):
    return ppl.normal(mu + 1.0, 1.0) @ "a"


@gen
def branch_left(mu):
    b = ppl.normal(mu - 1.0, 2.0) @ "b"
    c = ppl.exponential(1.0) @ "e"
    return b + c


@gen
def cond_model(p):
    c = ppl.flip(p) @ "c"
    mu = ppl.normal(0.0, 1.0) @ "mu"
    x = ppl.cond(c, branch_right, branch_left)(mu) @ "br"
    return ppl.normal(x, 0.5) @ "y"


def cond_parts(ch, p):
    """(log prior of c and mu, log density of the branch choices, branch output)."""
    c, mu = int(ch["c"]), float(ch["mu"])
    head = st.bernoulli.logpmf(c, p) + st.norm.logpdf(mu, 0, 1)
    if c:
        a = float(ch["br", "a"])
        return head, st.norm.logpdf(a, mu + 1, 1), a
    b, e = float(ch["br", "b"]), float(ch["br", "e"])
    return head, st.norm.logpdf(b, mu - 1, 2) + st.expon.logpdf(e), b + e


def cond_logp(ch, p):
    head, br, x = cond_parts(ch, p)
    return head + br + st.norm.logpdf(float(ch["y"]), x, 0.5)


# (model, args, independent log density, observation addresses)
CASES = {
    "regression": (regression, (XS,), regression_logp, ["ys"]),
    "hierarchical": (hierarchical, (SIGMAS,), hierarchical_logp, [("group", "y")]),
    "mixture": (mixture, (1.0,), mixture_logp, ["obs"]),
    "hmm": (hmm_model, (jnp.asarray(0),), hmm_logp, [("steps", "y")]),
    "cond": (cond_model, (0.3,), cond_logp, ["y"]),
}


def lik(name, ch, args):
    """Independent log likelihood of the observation addresses given the latent choices."""
    if name == "regression":
        s, b, n = (float(ch[a]) for a in ("slope", "intercept", "noise"))
        return st.norm.logpdf(np.asarray(ch["ys"]), s * np.asarray(args[0]) + b, n).sum()
    if name == "hierarchical":
        return st.norm.logpdf(np.asarray(ch["group", "y"]), np.asarray(ch["group", "theta"]),
                              np.asarray(args[0])).sum()
    if name == "mixture":
        return st.norm.logpdf(float(ch["obs"]), float(ch["m", "x"]), 0.5)
    if name == "hmm":
        zs = np.asarray(ch["steps", "z"])
        return st.norm.logpdf(np.asarray(ch["steps", "y"]), MEANS[zs], 0.5).sum()
    if name == "cond":
        _, _, x = cond_parts(ch, args[0])
        return st.norm.logpdf(float(ch["y"]), x, 0.5)
    raise KeyError(name)
