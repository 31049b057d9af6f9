"""Demo section: programmable variational inference.

1. A VAE on scikit-learn's digits (8x8, binarized), trained with ``vi.elbo`` and ``vi.iwelbo(5)``;
   held-out IWELBO(100), loss curves and reconstructions as PNGs.
2. A two-component mixture with a discrete latent, trained with a *user-defined* objective: an
   ELBO whose discrete site is enumerated (``vi.with_estimators(guide, {"c": vi.enum})``), next to
   the library's ``vi.vimco(4)``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ppl
from inference import vi
from ppl import ChoiceMap

LATENT, HIDDEN = 8, 128


def _dense(k, i, o):
    return {"w": jax.random.normal(k, (i, o)) / jnp.sqrt(i), "b": jnp.zeros(o)}


def mlp(p, x):
    """The two-layer tanh MLP of the VAE's encoder and decoder."""
    return jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"] + p["l2"]["b"]


def binary_digits():
    """scikit-learn's 8x8 digits, binarized (pixel > 7), as float32 of shape (1797, 64)."""
    from sklearn.datasets import load_digits

    return (load_digits().data > 7).astype(np.float32)


def digits_split():
    """A fixed train (1500) / held-out (297) split of :func:`binary_digits`."""
    X = binary_digits()
    perm = np.random.default_rng(0).permutation(len(X))
    return jnp.asarray(X[perm[:1500]]), jnp.asarray(X[perm[1500:]])


def vae_init(key):
    ks = jax.random.split(key, 4)
    return {"enc": {"l1": _dense(ks[0], 64, HIDDEN), "l2": _dense(ks[1], HIDDEN, 2 * LATENT)},
            "dec": {"l1": _dense(ks[2], LATENT, HIDDEN), "l2": _dense(ks[3], HIDDEN, 64)}}


@ppl.gen
def vae_model(params):
    z = ppl.normal(jnp.zeros(LATENT), 1.0) @ "z"
    return ppl.bernoulli(logits=mlp(params["dec"], z)) @ "x"


@ppl.gen
def vae_guide(params, x):
    out = mlp(params["enc"], x)
    return ppl.normal(out[:LATENT], jnp.exp(out[LATENT:])) @ "z"


@ppl.gen
def mixture(params):
    c = ppl.flip(0.5) @ "c"
    return ppl.normal(params["mu"][c], 1.0) @ "x"


@ppl.gen
def assign(params, x):
    return ppl.bernoulli(logits=params["a"] * x + params["b"]) @ "c"


def enumerated_elbo(model, guide):
    """A user-defined objective: the ELBO with the guide's discrete site summed out exactly."""
    g = vi.with_estimators(guide, {"c": vi.enum})

    @vi.expectation
    def objective(key, params, observations, model_args=(), guide_args=()):
        q = g.simulate(key, params, *guide_args)
        logp, _ = model.assess(q.choices | observations, params, *model_args)
        return logp - q.score

    return objective


def _mix_loglik(mu, xs):
    comp = jax.scipy.stats.norm.logpdf(xs[:, None], mu[None, :], 1.0)
    return float(jnp.mean(jax.nn.logsumexp(comp + jnp.log(0.5), axis=1)))


def run(out_dir: str, key) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("loading scikit-learn's digits (8x8, binarized) ...", flush=True)
    Xtr, Xte = digits_split()
    p0 = vae_init(jax.random.key(0))
    iw100 = vi.map_mean(vi.iwelbo(vae_model, vae_guide, 100), in_axes=(0, None, 0))
    pix = jnp.clip(Xtr.mean(0), 1e-3, 1 - 1e-3)
    base = float(jnp.mean(jnp.sum(Xte * jnp.log(pix) + (1 - Xte) * jnp.log(1 - pix), -1)))
    print(f"VAE on digits ({Xtr.shape[0]} train / {Xte.shape[0]} held out, latent {LATENT}, MLP 64-{HIDDEN}-{LATENT})")
    print(f"  baseline (independent pixels) held-out log-likelihood: {base:.2f}")
    results = {}
    for name, per_datum in (("elbo", vi.elbo(vae_model, vae_guide)), ("iwelbo(5)", vi.iwelbo(vae_model, vae_guide, 5))):
        obj = vi.map_mean(per_datum, in_axes=(0, None, 0))
        k = jax.random.fold_in(key, len(results))
        print(f"  training the VAE with {name}: 300 Adam steps, minibatch 128 (compile, then run) ...", flush=True)
        res = vi.fit(k, obj, p0, optax.adam(3e-3), 300, vi.minibatch(ChoiceMap({"x": Xtr}), 128), (),
                     vi.minibatch((Xtr,), 128), progress=True)
        print("  estimating the held-out IWELBO(100) (compile) ...", flush=True)
        held = float(iw100.estimate(jax.random.key(1), res.params, ChoiceMap({"x": Xte}), (), (Xte,)))
        results[name] = res
        print(f"  {name:10s}: training loss {res.losses[:20].mean():.2f} -> {res.losses[-20:].mean():.2f}; "
              f"held-out IWELBO(100) {held:.2f}")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, res in results.items():
        ax.plot(np.convolve(res.losses, np.ones(20) / 20, mode="valid"), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("negative objective (per datum)")
    ax.set_title("VAE on digits: loss curves")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "vi_vae_loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")

    # reconstructions: encode held-out digits, decode the guide's mean
    params = results["elbo"].params
    xs = Xte[:8]
    z = jax.vmap(lambda x: mlp(params["enc"], x)[:LATENT])(xs)
    recon = jax.nn.sigmoid(jax.vmap(lambda z: mlp(params["dec"], z))(z))
    fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
    for i in range(8):
        axes[0, i].imshow(np.asarray(xs[i]).reshape(8, 8), cmap="gray_r")
        axes[1, i].imshow(np.asarray(recon[i]).reshape(8, 8), cmap="gray_r")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, i].set_xlabel(f"digit {i + 1}", fontsize=7)
    axes[0, 0].set_ylabel("held out", fontsize=7)
    axes[1, 0].set_ylabel("reconstructed", fontsize=7)
    fig.suptitle("held-out digits (top) and VAE reconstructions (bottom)")
    path = os.path.join(out_dir, "vi_vae_reconstructions.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")

    # discrete-latent mixture with a user-defined objective
    print("simulating 200 points from a two-component mixture ...", flush=True)
    k1, k2 = jax.random.split(jax.random.key(11))
    c = jax.random.bernoulli(k1, 0.5, (200,)).astype(jnp.int32)
    data = jnp.array([-2.0, 2.0])[c] + jax.random.normal(k2, (200,))
    m0 = {"mu": jnp.array([-0.3, 0.5]), "a": jnp.array(0.0), "b": jnp.array(0.0)}
    print(f"mixture: log-likelihood at init {_mix_loglik(m0['mu'], data):.3f}, at the truth "
          f"{_mix_loglik(jnp.array([-2.0, 2.0]), data):.3f}")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, per_datum in (("enumerated ELBO (user-defined)", enumerated_elbo(mixture, assign)),
                            ("vimco(4)", vi.vimco(mixture, assign, 4))):
        obj = vi.map_mean(per_datum, in_axes=(0, None, 0))
        print(f"  training the mixture with the {name}: 150 Adam steps (compile, then run) ...", flush=True)
        res = vi.fit(key, obj, m0, optax.adam(0.05), 150, vi.minibatch(ChoiceMap({"x": data}), 32), (),
                     vi.minibatch((data,), 32), progress=True)
        mu = ", ".join(f"{float(m):.2f}" for m in np.asarray(res.params["mu"]))
        print(f"  {name:31s}: mu = ({mu}), "
              f"log-likelihood {_mix_loglik(res.params['mu'], data):.3f}")
        ax.plot(np.convolve(res.losses, np.ones(10) / 10, mode="valid"), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("negative objective (per datum)")
    ax.set_title("two-component mixture: discrete-latent objectives")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "vi_mixture_loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
