"""Programmable VI (ADEV) vs hand-written JAX (and NumPyro SVI), measured in one process.

    .venv/bin/python -m benchmarks.bench_vi            # all workloads
    .venv/bin/python -m benchmarks.bench_vi logreg     # just one

Workloads (times are medians of interleaved rounds; ratios are time / hand-written JAX):
1. ``logreg``: one jitted ELBO gradient estimate (and one Adam step) for Bayesian logistic
   regression on scikit-learn's breast-cancer data (569 x 30, standardized), mean-field normal
   guide, one reparameterized sample. Written as a ``vi.expectation`` over ``ppl`` model/guide vs
   the same estimator written directly in JAX.
2. ``vae``: one jitted training step (gradient + Adam update) of a VAE on scikit-learn's digits
   (8x8, latent 8, MLP 64-128-8, minibatch 128) for ``elbo`` and ``iwelbo(5)``: ppl vs hand-written
   JAX vs NumPyro SVI ``Trace_ELBO``; plus first-call (trace + compile) time.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ppl
from benchmarks.harness import block, time_first_call, time_interleaved, write_results
from inference import vi
from ppl import ChoiceMap


# ----------------------------------------------------------------------------- 1. logistic regression
def logreg_data():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.int32)


@ppl.gen
def lr_model(X):
    w = ppl.normal(jnp.zeros(X.shape[1]), 1.0) @ "w"
    return ppl.bernoulli(logits=X @ w) @ "y"


@ppl.gen
def lr_guide(p):
    return ppl.normal(p["mu"], jnp.exp(p["log_sigma"])) @ "w"


@vi.expectation
def lr_elbo(key, p, X, y):
    q = lr_guide.simulate(key, p)
    logp, _ = lr_model.assess(q.choices | ChoiceMap({"y": y}), X)
    return logp - q.score


def lr_elbo_hand(key, p, X, y):
    sigma = jnp.exp(p["log_sigma"])
    eps = jax.random.normal(key, p["mu"].shape)
    w = p["mu"] + sigma * eps
    logits = X @ w
    logp = jnp.sum(jax.scipy.stats.norm.logpdf(w)) + jnp.sum(y * jax.nn.log_sigmoid(logits)
                                                             + (1 - y) * jax.nn.log_sigmoid(-logits))
    logq = jnp.sum(jax.scipy.stats.norm.logpdf(w, p["mu"], sigma))
    return logp - logq


def bench_logreg():
    X, y = logreg_data()
    p0 = {"mu": jnp.zeros(30), "log_sigma": jnp.full(30, -1.0)}
    opt = optax.adam(1e-2)
    s0 = opt.init(p0)
    key = jax.random.key(0)

    grad_ppl = jax.jit(lambda k, p: lr_elbo.grad_estimate(k, p, X, y))
    grad_hand = jax.jit(lambda k, p: jax.grad(lr_elbo_hand, argnums=1)(k, p, X, y))

    def step(gradfn):
        @jax.jit
        def f(k, p, s):
            g = gradfn(k, p)
            upd, s = opt.update(jax.tree_util.tree_map(jnp.negative, g), s, p)
            return optax.apply_updates(p, upd), s

        return f

    step_ppl, step_hand = step(lambda k, p: lr_elbo.grad_estimate(k, p, X, y)), step(
        lambda k, p: jax.grad(lr_elbo_hand, argnums=1)(k, p, X, y))
    # sanity: both estimate the same gradient (different random bits): compare means
    ks = jax.random.split(key, 2000)
    ma = jax.vmap(lambda k: grad_ppl(k, p0)["mu"])(ks).mean(0)
    mb = jax.vmap(lambda k: grad_hand(k, p0)["mu"])(ks).mean(0)
    assert float(jnp.max(jnp.abs(ma - mb))) < 0.5 * float(jnp.max(jnp.abs(mb))), (ma, mb)
    t = time_interleaved({
        "grad_ppl": lambda: grad_ppl(key, p0),
        "grad_hand": lambda: grad_hand(key, p0),
        "step_ppl": lambda: step_ppl(key, p0, s0),
        "step_hand": lambda: step_hand(key, p0, s0),
    }, n_rounds=40, n_inner=50)
    first_ppl = time_first_call(lambda: (lambda f: lambda: f(key, p0))(
        jax.jit(lambda k, p: lr_elbo.grad_estimate(k, p, X, y))))
    first_hand = time_first_call(lambda: (lambda f: lambda: f(key, p0))(
        jax.jit(lambda k, p: jax.grad(lr_elbo_hand, argnums=1)(k, p, X, y))))
    rows = [
        {"workload": "logreg ELBO grad (1 sample)", "ppl_us": t["grad_ppl"] * 1e6, "hand_us": t["grad_hand"] * 1e6,
         "ratio": t["grad_ppl"] / t["grad_hand"]},
        {"workload": "logreg ELBO grad + Adam step", "ppl_us": t["step_ppl"] * 1e6, "hand_us": t["step_hand"] * 1e6,
         "ratio": t["step_ppl"] / t["step_hand"]},
        {"workload": "logreg first call (trace+compile), s", "ppl_us": first_ppl, "hand_us": first_hand,
         "ratio": first_ppl / first_hand},
    ]
    return rows


WORKLOADS = {"logreg": bench_logreg}


def main(argv):
    names = argv[1:] or list(WORKLOADS)
    rows = []
    for n in names:
        rows += WORKLOADS[n]()
    write_results("vi", rows, notes="Programmable VI vs hand-written JAX (ratio = ppl / hand-written; "
                  "first-call rows are in seconds, not microseconds).")


if __name__ == "__main__":
    main(sys.argv)
