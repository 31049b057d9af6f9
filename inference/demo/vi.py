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
    """Initial VAE parameters: Gaussian weights scaled by 1/sqrt(fan-in), zero biases. Drawn with
    NumPy from a generator seeded by ``key``'s data (same key, same parameters), since compiling
    JAX's sampler for each weight shape would take longer than the draws."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())

    def dense(i, o):
        return {"w": jnp.asarray(rng.normal(size=(i, o)) / np.sqrt(i), jnp.float32),
                "b": jnp.asarray(np.zeros(o, np.float32))}

    return {"enc": {"l1": dense(64, HIDDEN), "l2": dense(HIDDEN, 2 * LATENT)},
            "dec": {"l1": dense(LATENT, HIDDEN), "l2": dense(HIDDEN, 64)}}


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
    """Mean log-likelihood per point of the mixture with means ``mu`` (NumPy: nothing to compile)."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    comp = norm.logpdf(np.asarray(xs)[:, None], np.asarray(mu)[None, :], 1.0)
    return float(np.mean(logsumexp(comp + np.log(0.5), axis=1)))


def _np_mlp(p, x):
    return np.tanh(x @ np.asarray(p["l1"]["w"]) + np.asarray(p["l1"]["b"])) @ np.asarray(p["l2"]["w"]) + np.asarray(
        p["l2"]["b"])


def run(out_dir: str, key) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("loading scikit-learn's digits (8x8, binarized) ...", flush=True)
    Xtr, Xte = digits_split()
    p0 = vae_init(jax.random.key(0))
    iw100 = vi.map_mean(vi.iwelbo(vae_model, vae_guide, 100), in_axes=(0, None, 0))
    Xtr_np, Xte_np = np.asarray(Xtr), np.asarray(Xte)
    pix = np.clip(Xtr_np.mean(0), 1e-3, 1 - 1e-3)
    base = float(np.mean(np.sum(Xte_np * np.log(pix) + (1 - Xte_np) * np.log(1 - pix), -1)))
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

    # reconstructions: encode held-out digits, decode the guide's mean (in NumPy: nothing to compile)
    params = results["elbo"].params
    xs = Xte_np[:8]
    z = _np_mlp(params["enc"], xs)[:, :LATENT]
    recon = 1.0 / (1.0 + np.exp(-_np_mlp(params["dec"], z)))
    mosaic = np.ones((2 * 9 - 1, 8 * 9 - 1))  # 8x8 images with 1-pixel gaps
    for i in range(8):
        mosaic[0:8, 9 * i:9 * i + 8] = xs[i].reshape(8, 8)
        mosaic[9:17, 9 * i:9 * i + 8] = recon[i].reshape(8, 8)
    mosaic[8, :] = 0.0
    for i in range(1, 8):
        mosaic[:, 9 * i - 1] = 0.0
    fig, ax = plt.subplots(figsize=(8, 2.6))
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([9 * i + 3.5 for i in range(8)], [str(i + 1) for i in range(8)])
    ax.set_yticks([3.5, 12.5], ["held out", "reconstructed"])
    ax.set_xlabel("held-out digit")
    ax.set_ylabel("image (8x8 pixels)")
    ax.set_title("held-out digits and their VAE (elbo) reconstructions")
    fig.tight_layout()
    path = os.path.join(out_dir, "vi_vae_reconstructions.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")

    # discrete-latent mixture with a user-defined objective
    print("simulating 200 points from a two-component mixture ...", flush=True)
    rng = np.random.default_rng(11)
    data = jnp.asarray(np.array([-2.0, 2.0])[rng.integers(0, 2, 200)] + rng.normal(size=200), jnp.float32)
    m0 = {"mu": jnp.array([-0.3, 0.5]), "a": jnp.array(0.0), "b": jnp.array(0.0)}
    truth_ll = _mix_loglik(np.array([-2.0, 2.0]), data)
    print(f"mixture: log-likelihood per point at init {_mix_loglik(m0['mu'], data):.3f}, at the true means "
          f"(-2, 2) {truth_ll:.3f}")
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
    ax.axhline(-truth_ll, color="k", ls="--", lw=1, label="exact -log-likelihood at the true means")
    ax.set_xlabel("step")
    ax.set_ylabel("negative objective (per datum)")
    ax.set_title("two-component mixture: discrete-latent objectives")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "vi_mixture_loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
