"""Demo section: the modeling language (simulate and score the example models)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from ppl import ChoiceMap, gen


@gen
def regression(xs):
    slope = ppl.normal(0.0, 1.0) @ "slope"
    intercept = ppl.normal(0.0, 2.0) @ "intercept"
    noise = ppl.half_normal(1.0) @ "noise"
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
    k1, k2, k3, k4 = (jax.random.fold_in(key, i) for i in range(4))  # fold_in: one compiled program
    print("simulating the regression model (first call: trace + compile) ...", flush=True)
    tr = regression.simulate(k1, xs)
    print(tr)
    print("assessing and generating with observed ys (compile) ...", flush=True)
    logp, _ = regression.assess(tr.choices, xs)
    print(f"assess(simulated choices) = {float(logp):.4f}  (trace score {float(tr.score):.4f})")
    obs = ChoiceMap({"ys": tr.choices["ys"]})
    _, w = regression.generate(k2, obs, xs)
    print(f"generate with observed ys: log weight = {float(w):.4f}")

    print("simulating a 50-step HMM written with ppl.scan (compile) ...", flush=True)
    hmm = ppl.scan(hmm_step, length=50)
    htr = hmm.simulate(k3, jnp.asarray(0), None)
    states = " ".join(str(int(z)) for z in np.asarray(htr.choices["z"])[:12])
    print(f"HMM via ppl.scan: 50 steps, score {float(htr.score):.3f}, first states {states} ...")

    print("drawing 20 prior regression lines (the compiled simulate is reused) and plotting ...", flush=True)
    prior = [regression.simulate(jax.random.fold_in(k4, i), xs).choices for i in range(20)]
    slopes = np.array([float(ch["slope"]) for ch in prior])
    intercepts = np.array([float(ch["intercept"]) for ch in prior])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for i, (s, b) in enumerate(zip(slopes, intercepts)):
        axes[0].plot(xs, s * xs + b, color="C0", alpha=0.3, label="prior lines slope*x + intercept" if i == 0 else None)
    axes[0].scatter(xs, tr.choices["ys"], color="k", s=10, label="one simulated data set")
    axes[0].set_title("regression: prior lines and a simulated data set")
    axes[0].set_xlabel("x")
    axes[0].set_ylabel("y")
    axes[0].legend(fontsize=7)
    axes[1].plot(np.asarray(htr.choices["y"]), ".-", label="observation y")
    axes[1].step(range(50), np.array([-1.0, 1.0])[np.asarray(htr.choices["z"])], where="mid", label="state mean")
    axes[1].set_title("HMM simulated with ppl.scan")
    axes[1].set_xlabel("time step")
    axes[1].set_ylabel("y")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "modeling.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
