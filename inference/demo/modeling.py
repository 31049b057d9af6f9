"""Demo section: the modeling language (simulate and score the example models)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

import ppl
from ppl import ChoiceMap, gen


@gen
def regression(xs):
    slope = ppl.normal(0.0, 1.0) @ "slope"
    intercept = ppl.normal(0.0, 2.0) @ "intercept"
    noise = ppl.gamma(2.0, 2.0) @ "noise"
    return ppl.normal(slope * xs + intercept, noise) @ "ys"


@gen
def hmm_step(z, _):
    z = ppl.categorical(logits=jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8]]))[z]) @ "z"
    ppl.normal(jnp.array([-1.0, 1.0])[z], 0.5) @ "y"
    return z, z


def run(out_dir: str, key) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = jnp.linspace(-2.0, 2.0, 30)
    k1, k2, k3 = jax.random.split(key, 3)
    tr = regression.simulate(k1, xs)
    print(tr)
    logp, _ = regression.assess(tr.choices, xs)
    print(f"assess(simulated choices) = {float(logp):.4f}  (trace score {float(tr.score):.4f})")
    obs = ChoiceMap({"ys": tr.choices["ys"]})
    _, w = regression.generate(k2, obs, xs)
    print(f"generate with observed ys: log weight = {float(w):.4f}")

    hmm = ppl.scan(hmm_step, length=50)
    htr = hmm.simulate(k3, jnp.asarray(0), None)
    print(f"HMM via ppl.scan: 50 steps, score {float(htr.score):.3f}, states {htr.choices['z'][:12]}...")

    keys = jax.random.split(key, 200)
    slopes = jax.vmap(lambda k: regression.simulate(k, xs).choices["slope"])(keys)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for s in slopes[:20]:
        axes[0].plot(xs, s * xs, color="C0", alpha=0.3)
    axes[0].scatter(xs, tr.choices["ys"], color="k", s=10, label="one simulated data set")
    axes[0].set_title("regression: prior lines and a simulated data set")
    axes[0].legend()
    axes[1].plot(htr.choices["y"], ".-", label="y")
    axes[1].step(range(50), jnp.array([-1.0, 1.0])[htr.choices["z"]], where="mid", label="state mean")
    axes[1].set_title("HMM simulated with ppl.scan")
    axes[1].legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "modeling.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
