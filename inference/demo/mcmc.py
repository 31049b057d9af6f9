"""MCMC demo: NUTS on a regression, and a kernel cycle (Gibbs + HMC) on a discrete-continuous
changepoint model. Prints ArviZ summaries next to the exact posterior means and writes trace
plots whose marginals carry the exact posterior densities.

Both models have exact answers to compare with: the regression's posterior is a Gaussian given
the noise scale, so a 1-D grid over the noise gives it to quadrature accuracy; the changepoint's
rates are conjugate (gamma prior, Poisson counts), so enumerating the change time gives it
exactly.

Compile time dominates a cold run, so the section compiles few programs: the changepoint's
burn-in is a first ``mcmc.run`` of the same kernel with the same ``chunk_size`` as the sampling
run (its fixed-step HMC needs no adaptation), so both runs share one compiled program, where
``mcmc.run(..., burn_in=...)`` would compile a second one for the burn-in loop.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats

import ppl
from inference import mcmc

PRIOR_SD, NOISE_SCALE = 2.0, 1.0  # regression: slope, intercept ~ normal(0, 2); noise ~ half_normal(1)
GAMMA_A, GAMMA_B = 2.0, 1.0  # changepoint: rates ~ gamma(2, rate 1)


@ppl.gen
def regression(xs):
    slope = ppl.normal(0.0, PRIOR_SD) @ "slope"
    intercept = ppl.normal(0.0, PRIOR_SD) @ "intercept"
    noise = ppl.half_normal(NOISE_SCALE) @ "noise"
    return ppl.normal(slope * xs + intercept, noise) @ "ys"


@ppl.gen
def changepoint(T):
    """Counts with a rate that changes at an unknown time ``tau`` (coal-mining-disaster style)."""
    tau = ppl.categorical(logits=jnp.zeros(T)) @ "tau"
    early = ppl.gamma(GAMMA_A, GAMMA_B) @ "early"
    late = ppl.gamma(GAMMA_A, GAMMA_B) @ "late"
    rate = jnp.where(jnp.arange(T) < tau, early, late)
    return ppl.poisson(rate) @ "counts"


def regression_data(seed: int = 7):
    """The built-in regression data: 50 points, ``y = 1.3 x - 0.5 + 0.4 * noise``."""
    xs = np.linspace(-2.0, 2.0, 50)
    return xs, 1.3 * xs - 0.5 + 0.4 * np.random.default_rng(seed).normal(size=xs.shape)


def changepoint_data(seed: int = 1, T: int = 60, tau: int = 35):
    """The built-in counts: rate 3 before time ``tau``, 1 from it on."""
    return np.random.default_rng(seed).poisson(np.where(np.arange(T) < tau, 3.0, 1.0))


def exact_regression(xs, ys, n_grid: int = 4000):
    """The regression's posterior: given the noise scale s, (slope, intercept) is Gaussian, so a
    grid over s gives the posterior exactly up to quadrature. Returns the posterior means and
    the marginal densities (callables) of slope, intercept and noise."""
    X = np.stack([xs, np.ones_like(xs)], axis=1)
    s = np.linspace(1e-3, 3.0, n_grid)[:, None, None]
    prec = X.T @ X / s**2 + np.eye(2) / PRIOR_SD**2  # posterior precision given s
    cov = np.linalg.inv(prec)
    mean = cov @ (X.T @ ys)[:, None] / s**2
    # log p(ys | s) + log p(s), up to a constant
    quad = ys @ ys / s[:, 0, 0] ** 2 - (mean[:, :, 0] * (prec @ mean)[:, :, 0]).sum(1)
    logw = (-0.5 * quad - len(ys) * np.log(s[:, 0, 0]) - 0.5 * np.linalg.slogdet(prec)[1]
            - 0.5 * (s[:, 0, 0] / NOISE_SCALE) ** 2)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    ds = s[1, 0, 0] - s[0, 0, 0]

    def gauss_mix(i):
        return lambda x: (w[:, None] * stats.norm.pdf(x[None], mean[:, i], np.sqrt(cov[:, i, i])[:, None])).sum(0)

    means = {"slope": float(w @ mean[:, 0, 0]), "intercept": float(w @ mean[:, 1, 0]), "noise": float(w @ s[:, 0, 0])}
    dens = {"slope": gauss_mix(0), "intercept": gauss_mix(1),
            "noise": lambda x: np.interp(x, s[:, 0, 0], w / ds)}
    return means, dens


def exact_changepoint(counts):
    """The changepoint's posterior by enumerating ``tau`` (the rates are conjugate given it).
    Returns the posterior means, the pmf of ``tau`` and the marginal densities of the rates."""
    T = len(counts)
    n1 = np.arange(T)  # points before the change
    s1 = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n2, s2 = T - n1, counts.sum() - s1
    a1, b1, a2, b2 = GAMMA_A + s1, GAMMA_B + n1, GAMMA_A + s2, GAMMA_B + n2
    logp = special.gammaln(a1) - a1 * np.log(b1) + special.gammaln(a2) - a2 * np.log(b2)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    means = {"tau": float(p @ n1), "early": float(p @ (a1 / b1)), "late": float(p @ (a2 / b2))}
    dens = {"tau": p,
            "early": lambda x: (p[:, None] * stats.gamma.pdf(x[None], a1[:, None], scale=1 / b1[:, None])).sum(0),
            "late": lambda x: (p[:, None] * stats.gamma.pdf(x[None], a2[:, None], scale=1 / b2[:, None])).sum(0)}
    return means, dens


def _print_comparison(res, exact, truth):
    table = res.summary()
    print(f"{'':10s} {'MCMC mean':>10s} {'± MCSE':>7s} {'exact':>8s} {'truth':>7s}")
    for name, value in exact.items():
        row = table.loc[name]
        print(f"{name:10s} {row['mean']:10.3f} {row['mcse_mean']:7.3f} {value:8.3f} {truth[name]:7.3f}")


def _trace_plot(res, names, path, title, exact=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    exact = exact or {}
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 2.4 * len(names)))
    for row, name in zip(np.atleast_2d(axes), names):
        raw = np.asarray(res.choices[name])
        x = raw.astype(float)
        integer = np.issubdtype(raw.dtype, np.integer)
        lo, hi = x.min(), x.max()
        if integer:  # one bin per integer value
            bins = np.arange(lo, hi + 2) - 0.5
        else:
            bins = np.linspace(lo, hi, 31)
        for c in range(x.shape[0]):
            row[0].plot(x[c], lw=0.6, alpha=0.8, label=f"chain {c}")
            row[1].hist(x[c], bins=bins, alpha=0.4, density=True)
        if name in exact:
            if integer:
                values = np.arange(int(lo), int(hi) + 1)
                row[1].plot(values, exact[name][values], "ko", ms=3, label="exact posterior")
            else:
                grid = np.linspace(lo, hi, 200)
                row[1].plot(grid, exact[name](grid), "k-", lw=1.2, label="exact posterior")
            row[1].legend(fontsize=6)
        if integer:
            for ax in (row[0].yaxis, row[1].xaxis):
                ax.set_major_locator(MaxNLocator(integer=True))
        row[0].set_xlabel("draw")
        row[0].set_ylabel(name)
        row[1].set_xlabel(name)
        row[1].set_ylabel("probability" if integer else "density")
    axes.flat[0].set_title(f"{title}: traces")
    axes.flat[0].legend(fontsize=6, ncol=4)
    axes.flat[1].set_title("marginals (histograms: chains)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def run(out_dir: str, key=None):
    key = jax.random.key(0) if key is None else key
    k_init, k_run, k_cpi, k_burn, k_cpr = (jax.random.fold_in(key, i) for i in range(5))
    os.makedirs(out_dir, exist_ok=True)
    warnings.filterwarnings("ignore", module="arviz")

    # 1. regression with NUTS (4 chains, warm-up adapts step size and mass matrix)
    xs, ys = regression_data()
    print("NUTS on a linear regression: 4 chains, 500 warm-up + 500 draws (compile, then run) ...", flush=True)
    trs = mcmc.init_chains(k_init, regression, (jnp.asarray(xs, jnp.float32),),
                           ppl.ChoiceMap({"ys": jnp.asarray(ys, jnp.float32)}), 4)
    kernel = mcmc.nuts(ppl.select("slope", "intercept", "noise"))
    res = mcmc.run(k_run, kernel, trs, 500, burn_in=500, progress=True)
    print("Regression with NUTS (data simulated with slope 1.3, intercept -0.5, noise 0.4):")
    print(res.summary().to_string())
    means, dens = exact_regression(xs, ys)
    print("posterior means: MCMC vs exact (a grid over the noise, Gaussian given it):")
    _print_comparison(res, means, {"slope": 1.3, "intercept": -0.5, "noise": 0.4})
    _trace_plot(res, ["slope", "intercept", "noise"], os.path.join(out_dir, "mcmc_regression_trace.png"), "NUTS",
                dens)

    # 2. changepoint: Gibbs on the discrete change time, HMC on the two positive rates
    T, true_tau = 60, 35
    counts = changepoint_data(T=T, tau=true_tau)
    # starting traces: tau from its prior, both rates at their prior mean (constrained like the
    # counts, which also spares compiling the gamma sampler; the kernels move them from the first step)
    start = ppl.ChoiceMap({"counts": jnp.asarray(counts, jnp.int32), "early": GAMMA_A / GAMMA_B,
                           "late": GAMMA_A / GAMMA_B})
    trs = mcmc.init_chains(k_cpi, changepoint, (T,), start, 4)
    # a fixed HMC step size: the rates' posterior sd is about 0.1 (early) and 0.2 (late) in the
    # log space HMC moves in, so 0.08 is stable and 12 steps travel about one posterior width
    kernel = mcmc.cycle(mcmc.gibbs("tau"), mcmc.hmc(ppl.select("early", "late"), 0.08, 12))
    print("\nGibbs + HMC on a changepoint model: 4 chains, 300 burn-in + 500 draws (compile, then run) ...",
          flush=True)
    # burn-in: a first run whose draws are discarded; the same kernel, shapes and chunk_size make
    # the second run reuse its compiled program
    burn = mcmc.run(k_burn, kernel, trs, 300, progress=True, chunk_size=100)
    res2 = mcmc.run(k_cpr, kernel, burn.final_trace, 500, progress=True, chunk_size=100)
    print(f"\nChangepoint with cycle(gibbs('tau'), hmc(early, late)) (true tau {true_tau}, rates 3 -> 1):")
    print(res2.summary().to_string())
    gibbs_acc, hmc_acc = (float(np.asarray(a).mean()) for a in res2.acceptance_rate())
    print(f"mean acceptance rate: gibbs {gibbs_acc:.3f}, hmc {hmc_acc:.3f}")
    means, dens = exact_changepoint(counts)
    print("posterior means: MCMC vs exact (enumerating tau; the rates are conjugate given it):")
    _print_comparison(res2, means, {"tau": true_tau, "early": 3.0, "late": 1.0})
    _trace_plot(res2, ["tau", "early", "late"], os.path.join(out_dir, "mcmc_changepoint_trace.png"),
                "Gibbs + HMC", dens)
    return {"regression": res, "changepoint": res2}


if __name__ == "__main__":  # pragma: no cover
    run("demo_out")
