"""A variational autoencoder on binarized 8x8 digits (scikit-learn's ``load_digits``), trained with
the importance-weighted bound ``vi.iwelbo`` through ``vi.map_mean`` and ``vi.minibatch``.

The model and the guide are ``@ppl.gen`` functions with hand-written two-layer MLPs (no neural
network library needed)::

    decoder: z ~ Normal(0, I_2);  x ~ Bernoulli(logits = MLP_dec(z))        (64 pixels)
    encoder: z ~ Normal(mu(x), exp(log_s(x)))  with (mu, log_s) = MLP_enc(x)

Training maximizes the mean IWAE bound with K = 5 particles over random minibatches of 64
training digits (Adam). There is no exact answer for a neural model, so the checks are the two
theorems the bounds obey, each a paired z-test over the held-out digits (4 standard errors of
the per-digit differences): the IWAE bound grows with K (K = 1, 10, 100: ELBO <= IWAE_10 <=
IWAE_100 up to noise), and the trained model's held-out ELBO exceeds the untrained one.

Expected output (measured with small=True: 800 steps)::

    VAE on digits: 1,497 training / 300 held-out digits, latent dim 2, 800 steps
    held-out bound per digit: untrained ELBO -48.6; trained ELBO -22.0, IWAE_10 -21.1, IWAE_100 -21.1
    plot: vae_digits.png (training curve; held-out digits and their reconstructions)

Run: ``python docs/examples/vae_digits.py`` or ``ppl examples vae_digits``.
"""

from __future__ import annotations

import os

import numpy as np

LATENT, HIDDEN, PIXELS, K_TRAIN = 2, 64, 64, 5


def load():
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0 > 0.5).astype(np.float32)
    rng = np.random.default_rng(0)
    x = x[rng.permutation(len(x))]
    return x[300:], x[:300]


def main(small: bool = False, out_dir=None):
    import jax
    import jax.numpy as jnp
    import matplotlib
    import optax

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppl
    from ppl import ChoiceMap
    from inference import vi

    def mlp(p, h):
        return jnp.tanh(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def init_mlp(rng, n_in, n_out):  # numpy's generator: no compiled program for the initial weights
        return {"w1": jnp.asarray(rng.standard_normal((n_in, HIDDEN)) / np.sqrt(n_in), jnp.float32),
                "b1": jnp.zeros(HIDDEN),
                "w2": jnp.asarray(rng.standard_normal((HIDDEN, n_out)) / np.sqrt(HIDDEN), jnp.float32),
                "b2": jnp.zeros(n_out)}

    @ppl.gen
    def decoder(params):
        z = ppl.normal(jnp.zeros(LATENT), 1.0) @ "z"
        return ppl.bernoulli(logits=mlp(params["dec"], z)) @ "x"

    @ppl.gen
    def encoder(params, x):
        out = mlp(params["enc"], x)
        return ppl.normal(out[:LATENT], jnp.exp(out[LATENT:])) @ "z"

    train, test = load()
    rng = np.random.default_rng(0)
    p0 = {"enc": init_mlp(rng, PIXELS, 2 * LATENT), "dec": init_mlp(rng, LATENT, PIXELS)}
    objective = vi.map_mean(vi.iwelbo(decoder, encoder, K_TRAIN), in_axes=(0, None, 0))
    n_steps = 800 if small else 5000
    xs = jnp.asarray(train)
    res = vi.fit(jax.random.key(1), objective, p0, optax.adam(3e-3), n_steps,
                 vi.minibatch(ChoiceMap({"x": xs}), 64), (), vi.minibatch((xs,), 64), progress=False)

    @jax.jit(static_argnums=1)
    def held_out(params, K, key):
        """Per-digit IWAE_K bound on the held-out digits (K = 1: the ELBO); one compiled program per K."""
        bound = vi.iwelbo(decoder, encoder, K)
        keys = jax.random.split(key, len(test))
        return jax.vmap(lambda k, x: bound.estimate(k, params, ChoiceMap({"x": x}), (), (x,)))(keys, jnp.asarray(test))

    untrained = np.asarray(held_out(p0, 1, jax.random.key(2)), np.float64)
    bounds = {K: np.asarray(held_out(res.params, K, jax.random.key(3 + K)), np.float64) for K in (1, 10, 100)}
    failures = []

    def paired_greater(a, b, what):
        d = a - b
        se = d.std(ddof=1) / np.sqrt(len(d))
        if d.mean() < -4 * se:
            failures.append(f"{what}: mean difference {d.mean():.3f} (se {se:.3f})")

    paired_greater(bounds[10], bounds[1], "IWAE_10 >= ELBO")
    paired_greater(bounds[100], bounds[10], "IWAE_100 >= IWAE_10")
    d = bounds[1] - untrained
    if not d.mean() > 4 * d.std(ddof=1) / np.sqrt(len(d)):
        failures.append(f"training did not improve the held-out ELBO ({untrained.mean():.2f} -> {bounds[1].mean():.2f})")

    print(f"VAE on digits: {len(train):,} training / {len(test)} held-out digits, latent dim {LATENT}, {n_steps} steps")
    print(f"held-out bound per digit: untrained ELBO {untrained.mean():.1f}; trained ELBO {bounds[1].mean():.1f}, "
          f"IWAE_10 {bounds[10].mean():.1f}, IWAE_100 {bounds[100].mean():.1f}")

    # reconstructions of the first held-out digits: decoder probabilities at the encoder's mean
    recon = jax.nn.sigmoid(jax.vmap(lambda x: mlp(res.params["dec"], mlp(res.params["enc"], x)[:LATENT]))(
        jnp.asarray(test[:8])))
    fig = plt.figure(figsize=(10, 4))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(np.asarray(res.objective), lw=0.5, alpha=0.6, label=f"minibatch IWAE_{K_TRAIN}")
    ax.axhline(bounds[10].mean(), color="k", ls="--", label="held-out IWAE_10")
    ax.set_xlabel("training step")
    ax.set_ylabel("bound per digit (nats)")
    ax.set_title("training")
    ax.legend()
    for i in range(8):
        for row, img in enumerate((test[i], np.asarray(recon[i]))):
            a = fig.add_subplot(4, 16, 16 * row + 9 + i)
            a.imshow(img.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_ylabel("data" if row == 0 else "recon.", fontsize=7)
    out_dir = out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "vae_digits.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")

    if failures:
        raise AssertionError("VAE bounds violate their ordering: " + "; ".join(failures))
    return {"untrained_elbo": float(untrained.mean()), "bounds": {k: float(v.mean()) for k, v in bounds.items()},
            "plot": path}


if __name__ == "__main__":
    main()
