"""MCMC demo: NUTS on a regression, and a kernel cycle (Gibbs + HMC) on a discrete-continuous
changepoint model. Prints ArviZ summaries and writes trace plots."""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from inference import mcmc


@ppl.gen
def regression(xs):
    slope = ppl.normal(0.0, 2.0) @ "slope"
    intercept = ppl.normal(0.0, 2.0) @ "intercept"
    noise = ppl.gamma(2.0, 2.0) @ "noise"
    return ppl.normal(slope * xs + intercept, noise) @ "ys"


@ppl.gen
def changepoint(T):
    """Counts with a rate that changes at an unknown time ``tau`` (coal-mining-disaster style)."""
    tau = ppl.categorical(logits=jnp.zeros(T)) @ "tau"
    early = ppl.gamma(2.0, 1.0) @ "early"
    late = ppl.gamma(2.0, 1.0) @ "late"
    rate = jnp.where(jnp.arange(T) < tau, early, late)
    return ppl.poisson(rate) @ "counts"


def _trace_plot(res, names, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 2, figsize=(9, 2.4 * len(names)))
    for row, name in zip(np.atleast_2d(axes), names):
        raw = np.asarray(res.choices[name])
        x = raw.astype(float)
        if np.issubdtype(raw.dtype, np.integer):  # one bin per integer value
            bins = np.arange(raw.min(), raw.max() + 2) - 0.5
        else:
            bins = 30
        for c in range(x.shape[0]):
            row[0].plot(x[c], lw=0.6, alpha=0.8, label=f"chain {c}")
            row[1].hist(x[c], bins=bins, alpha=0.5, density=True)
        row[0].set_xlabel("draw")
        row[0].set_ylabel(name)
        row[1].set_xlabel(name)
        row[1].set_ylabel("density")
    axes.flat[0].set_title(f"{title}: traces")
    axes.flat[0].legend(fontsize=6, ncol=4)
    axes.flat[1].set_title("marginals")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def run(out_dir: str, key=None):
    key = jax.random.key(0) if key is None else key
    k_data, k_init, k_run, k_cp, k_cpi, k_cpr = jax.random.split(key, 6)
    os.makedirs(out_dir, exist_ok=True)
    warnings.filterwarnings("ignore", module="arviz")

    # 1. regression with NUTS (4 chains, warm-up adapts step size and mass matrix)
    xs = jnp.linspace(-2, 2, 50)
    ys = 1.3 * xs - 0.5 + 0.4 * jax.random.normal(k_data, xs.shape)
    print("NUTS on a linear regression: 4 chains, 500 warm-up + 500 draws (compile, then run) ...", flush=True)
    trs = mcmc.init_chains(k_init, regression, (xs,), ppl.ChoiceMap({"ys": ys}), 4)
    kernel = mcmc.nuts(ppl.select("slope", "intercept", "noise"))
    res = mcmc.run(k_run, kernel, trs, 500, burn_in=500, progress=True)
    print("Regression with NUTS (true slope 1.3, intercept -0.5, noise 0.4):")
    print(res.summary().to_string())
    _trace_plot(res, ["slope", "intercept", "noise"], os.path.join(out_dir, "mcmc_regression_trace.png"), "NUTS")

    # 2. changepoint: Gibbs on the discrete change time, HMC on the two positive rates
    T = 60
    true_tau = 35
    rates = jnp.where(jnp.arange(T) < true_tau, 3.0, 1.0)
    counts = jax.random.poisson(k_cp, rates)
    print("\nGibbs + HMC on a changepoint model: 4 chains, 300 warm-up + 500 draws (compile, then run) ...",
          flush=True)
    trs = mcmc.init_chains(k_cpi, changepoint, (T,), ppl.ChoiceMap({"counts": counts}), 4)
    kernel = mcmc.cycle(mcmc.gibbs("tau"), mcmc.hmc(ppl.select("early", "late"), 0.1, 8, adapt_step_size=True))
    res2 = mcmc.run(k_cpr, kernel, trs, 500, burn_in=300, progress=True)
    print(f"\nChangepoint with cycle(gibbs('tau'), hmc(early, late)) (true tau {true_tau}, rates 3 -> 1):")
    print(res2.summary().to_string())
    gibbs_acc, hmc_acc = (float(np.asarray(a).mean()) for a in res2.acceptance_rate())
    print(f"mean acceptance rate: gibbs {gibbs_acc:.3f}, hmc {hmc_acc:.3f}")
    _trace_plot(res2, ["tau", "early", "late"], os.path.join(out_dir, "mcmc_changepoint_trace.png"),
                "Gibbs + HMC")
    return {"regression": res, "changepoint": res2}


if __name__ == "__main__":  # pragma: no cover
    run("demo_out")
