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
from inference.demo.vi import LATENT, binary_digits, mlp, vae_guide, vae_init, vae_model
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


_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))


def _norm_logpdf(x, mu=0.0, sigma=1.0):
    return -0.5 * ((x - mu) / sigma) ** 2 - jnp.log(sigma) - _HALF_LOG_2PI


def lr_elbo_hand(key, p, X, y):
    sigma = jnp.exp(p["log_sigma"])
    eps = jax.random.normal(key, p["mu"].shape)
    w = p["mu"] + sigma * eps
    logits = X @ w
    logp = jnp.sum(_norm_logpdf(w)) + jnp.sum(y * jax.nn.log_sigmoid(logits)
                                                             + (1 - y) * jax.nn.log_sigmoid(-logits))
    logq = jnp.sum(_norm_logpdf(w, p["mu"], sigma))
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
    }, n_rounds=200, n_inner=20)
    first_ppl = time_first_call(lambda: (lambda f: lambda: f(key, p0))(
        jax.jit(lambda k, p: lr_elbo.grad_estimate(k, p, X, y))))
    first_hand = time_first_call(lambda: (lambda f: lambda: f(key, p0))(
        jax.jit(lambda k, p: jax.grad(lr_elbo_hand, argnums=1)(k, p, X, y))))
    def cost(f):
        ca = jax.jit(f).lower(key, p0).compile().cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        return float(ca.get("flops", 0.0)), float(ca.get("transcendentals", 0.0))

    (fp, tp), (fh, th) = cost(lambda k, p: lr_elbo.grad_estimate(k, p, X, y)), cost(
        lambda k, p: jax.grad(lr_elbo_hand, argnums=1)(k, p, X, y))
    rows = [
        {"workload": "logreg ELBO grad: compiled flops (XLA cost analysis)", "ppl_us": fp, "hand_us": fh,
         "ratio": fp / fh, "numpyro_us": "", "ppl/numpyro": ""},
        {"workload": "logreg ELBO grad: compiled transcendentals", "ppl_us": tp, "hand_us": th,
         "ratio": tp / th, "numpyro_us": "", "ppl/numpyro": ""},
        {"workload": "logreg ELBO grad (1 sample)", "ppl_us": t["grad_ppl"] * 1e6, "hand_us": t["grad_hand"] * 1e6,
         "ratio": t["grad_ppl"] / t["grad_hand"], "numpyro_us": "", "ppl/numpyro": ""},
        {"workload": "logreg ELBO grad + Adam step", "ppl_us": t["step_ppl"] * 1e6, "hand_us": t["step_hand"] * 1e6,
         "ratio": t["step_ppl"] / t["step_hand"], "numpyro_us": "", "ppl/numpyro": ""},
        {"workload": "logreg first call (trace+compile), s", "ppl_us": first_ppl, "hand_us": first_hand,
         "ratio": first_ppl / first_hand, "numpyro_us": "", "ppl/numpyro": ""},
    ]
    return rows


# ----------------------------------------------------------------------------- 2. VAE on digits
BATCH = 128
FIRST_CALL_ROUNDS = 3


def digits_data():
    return jnp.asarray(binary_digits())


def _hand_log_w(params, x, eps):
    """Per-datum log weights; x: (B, 64), eps: (B, K, L) -> (B, K)."""
    out = mlp(params["enc"], x)
    mu, sig = out[:, None, :LATENT], jnp.exp(out[:, None, LATENT:])
    z = mu + sig * eps
    logits = mlp(params["dec"], z)
    xb = x[:, None, :]
    loglik = jnp.sum(xb * jax.nn.log_sigmoid(logits) + (1 - xb) * jax.nn.log_sigmoid(-logits), -1)
    logpz = jnp.sum(_norm_logpdf(z), -1)
    logq = jnp.sum(_norm_logpdf(z, mu, sig), -1)
    return loglik + logpz - logq


def hand_objective(K):
    def obj(params, key, x):
        eps = jax.random.normal(key, (x.shape[0], K, LATENT))
        lw = _hand_log_w(params, x, eps)
        return jnp.mean(jax.nn.logsumexp(lw, axis=1) - jnp.log(K))

    return obj


def numpyro_svi(K):
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import SVI, RenyiELBO, Trace_ELBO

    def model(x, p0):
        dec = numpyro.param("dec", p0["dec"])
        with numpyro.plate("batch", x.shape[0]):
            z = numpyro.sample("z", nd.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            numpyro.sample("x", nd.Bernoulli(logits=mlp(dec, z)).to_event(1), obs=x)

    def guide(x, p0):
        enc = numpyro.param("enc", p0["enc"])
        out = mlp(enc, x)
        with numpyro.plate("batch", x.shape[0]):
            numpyro.sample("z", nd.Normal(out[:, :LATENT], jnp.exp(out[:, LATENT:])).to_event(1))

    loss = Trace_ELBO() if K == 1 else RenyiELBO(alpha=0.0, num_particles=K)
    return SVI(model, guide, optax.adam(1e-3), loss)


def bench_vae():
    X = digits_data()
    xb = X[:BATCH]
    p0 = vae_init(jax.random.key(0))
    opt = optax.adam(1e-3)
    s0 = opt.init(p0)
    key = jax.random.key(1)
    rows = []
    for K in (1, 5):
        per_datum = vi.elbo(vae_model, vae_guide) if K == 1 else vi.iwelbo(vae_model, vae_guide, K)
        obj = vi.map_mean(per_datum, in_axes=(0, None, 0))
        hand = hand_objective(K)

        def make_ppl():
            @jax.jit
            def step(k, p, s, x):
                v, g = obj.value_and_grad_estimate(k, p, ChoiceMap({"x": x}), (), (x,))
                upd, s = opt.update(jax.tree_util.tree_map(jnp.negative, g), s, p)
                return optax.apply_updates(p, upd), s, v

            return step

        def make_hand():
            @jax.jit
            def step(k, p, s, x):
                v, g = jax.value_and_grad(hand)(p, k, x)
                upd, s = opt.update(jax.tree_util.tree_map(jnp.negative, g), s, p)
                return optax.apply_updates(p, upd), s, v

            return step

        svi = numpyro_svi(K)
        svi_state = svi.init(jax.random.key(0), xb, p0)
        svi_update = jax.jit(svi.update)
        sp, sh = make_ppl(), make_hand()
        # sanity: the same objective (different random bits): values agree within noise
        vp = float(jnp.mean(jnp.stack([sp(jax.random.fold_in(key, i), p0, s0, xb)[2] for i in range(20)])))
        vh = float(jnp.mean(jnp.stack([sh(jax.random.fold_in(key, i), p0, s0, xb)[2] for i in range(20)])))
        assert abs(vp - vh) < 0.05 * abs(vh), (vp, vh)
        t = time_interleaved({
            "ppl": lambda: sp(key, p0, s0, xb),
            "hand": lambda: sh(key, p0, s0, xb),
            "numpyro": lambda: svi_update(svi_state, xb, p0),
        }, n_rounds=80, n_inner=10)
        # first calls alternate (ppl, hand) over a few rounds; medians (one call is noisy on a loaded machine)
        firsts = {"ppl": [], "hand": []}
        for _ in range(FIRST_CALL_ROUNDS):
            firsts["ppl"].append(time_first_call(lambda: (lambda f: lambda: f(key, p0, s0, xb))(make_ppl())))
            firsts["hand"].append(time_first_call(lambda: (lambda f: lambda: f(key, p0, s0, xb))(make_hand())))
        first_ppl, first_hand = (float(np.median(firsts[k])) for k in ("ppl", "hand"))
        name = "elbo" if K == 1 else f"iwelbo({K})"
        rows.append({"workload": f"VAE step {name} (grad + Adam, batch 128)", "ppl_us": t["ppl"] * 1e6,
                     "hand_us": t["hand"] * 1e6, "ratio": t["ppl"] / t["hand"],
                     "numpyro_us": t["numpyro"] * 1e6, "ppl/numpyro": t["ppl"] / t["numpyro"]})
        rows.append({"workload": f"VAE {name} first call (trace+compile), s", "ppl_us": first_ppl,
                     "hand_us": first_hand, "ratio": first_ppl / first_hand, "numpyro_us": "", "ppl/numpyro": ""})
    return rows


WORKLOADS = {"logreg": bench_logreg, "vae": bench_vae}
#: the workload a row belongs to, by the start of its name (rows of workloads not run are kept)
ROW_PREFIX = {"logreg": "logreg", "vae": "VAE"}


def _previous_rows(skip):
    import json
    import os

    from benchmarks.harness import RESULTS

    try:
        with open(os.path.join(RESULTS, "vi.json")) as fh:
            rows = json.load(fh)["rows"]
    except (OSError, ValueError, KeyError):
        return []
    return [r for r in rows if not any(r["workload"].startswith(ROW_PREFIX[n]) for n in skip)]


def main(argv):
    import os

    names = argv[1:] or list(WORKLOADS)
    rows = []
    for n in names:
        rows += WORKLOADS[n]()
    if set(names) != set(WORKLOADS):  # keep the other workloads' rows of the previous run
        kept = _previous_rows(names)
        rows = [r for r in kept if not r["workload"].startswith(ROW_PREFIX["vae"])] + rows + [
            r for r in kept if r["workload"].startswith(ROW_PREFIX["vae"])]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    write_results("vi", rows, notes="Programmable VI vs hand-written JAX (ratio = ppl / hand-written; "
                  "first-call rows are in seconds, not microseconds; VAE first calls: the median of "
                  f"{FIRST_CALL_ROUNDS} alternating ppl/hand first calls). Load average when written "
                  f"(1, 5, 15 min): {load}; rows of workloads not run this time are kept from the "
                  "previous file.")


if __name__ == "__main__":
    main(sys.argv)
