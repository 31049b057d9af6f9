"""Curve fitting with outliers: stochastic branches (``ppl.cond`` inside ``ppl.vmap``), Gibbs on
the discrete outlier flags and HMC on the line, checked against the exact posterior.

The model (GenJAX's introductory example, in ``ppl``)::

    slope, intercept ~ Normal(0, 2)
    for each point i (one ppl.vmap):
        outlier_i ~ Bernoulli(0.1)
        y_i ~ Normal(slope * x_i + intercept, 0.3)   if not outlier_i     (ppl.cond branches)
              Normal(0, 5)                           if outlier_i

Inference: ``mcmc.cycle(mcmc.hmc(select("slope", "intercept")), mcmc.gibbs(("points", "outlier")))``,
HMC on the continuous parameters followed by an exact Gibbs sweep over the flags (each value
scored with ``update``, which switches the branch), 4 chains started with no outliers.

Reference: the exact posterior. Given the outlier flags the model is a conjugate Gaussian linear
regression, so the posterior is a mixture over all 2^N flag configurations (N = 8 points, 256
terms) of Gaussians, with weights prior(flags) * N(y_inliers; 0, X S0 X^T + 0.3^2 I) *
prod_outliers N(y_i; 0, 5). The example checks the posterior means of slope and intercept and
every point's outlier probability within 4 Monte Carlo standard errors (ESS-based; for a flag,
at least the i.i.d. binomial standard error).

Expected output (full size; Monte Carlo error aside; small=True runs 4 chains x 500 draws)::

    curve fitting with outliers: 8 points, 4 chains x 1000 draws
    slope      MCMC  1.482 (mcse 0.001)   exact  1.481
    intercept  MCMC -0.506 (mcse 0.003)   exact -0.505
    P(outlier) MCMC  [0.012 0.014 1.    0.024 0.009 0.013 1.    0.014]
    P(outlier) exact [0.011 0.019 1.    0.021 0.008 0.012 1.    0.011]
    plot: curve_fitting.png (data coloured by P(outlier), posterior lines, exact mean line)

Run: ``python docs/examples/curve_fitting.py`` or ``ppl examples curve_fitting``.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

PRIOR_SD, NOISE_SD, OUTLIER_SD, P_OUTLIER = 2.0, 0.3, 5.0, 0.1


def data():
    """Eight points on the line y = 1.5 x - 0.5 with noise, two of them replaced by outliers."""
    xs = np.linspace(-2.0, 2.0, 8)
    noise = np.array([0.21, -0.33, 0.05, 0.4, -0.12, -0.27, 0.3, 0.08])
    ys = 1.5 * xs - 0.5 + noise
    ys[2], ys[6] = 4.0, -3.5  # outliers
    return xs.astype(np.float32), ys.astype(np.float32)


def _log_mvn(y, cov):
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (y @ np.linalg.solve(cov, y) + logdet + len(y) * np.log(2 * np.pi))


def exact_posterior(xs, ys):
    """Exact posterior means of (slope, intercept) and P(outlier_i | data), by enumerating every
    outlier configuration (each one a conjugate Gaussian regression)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    n = len(xs)
    X = np.stack([xs, np.ones(n)], axis=1)
    log_w, means = [], []
    configs = np.array(list(itertools.product([0, 1], repeat=n)), dtype=bool)
    for c in configs:
        inl = ~c
        lw = c.sum() * np.log(P_OUTLIER) + inl.sum() * np.log(1 - P_OUTLIER)
        lw += np.sum(-0.5 * (ys[c] / OUTLIER_SD) ** 2 - np.log(OUTLIER_SD * np.sqrt(2 * np.pi)))
        Xi, yi = X[inl], ys[inl]
        lw += _log_mvn(yi, PRIOR_SD**2 * Xi @ Xi.T + NOISE_SD**2 * np.eye(inl.sum())) if inl.any() else 0.0
        prec = np.eye(2) / PRIOR_SD**2 + Xi.T @ Xi / NOISE_SD**2
        means.append(np.linalg.solve(prec, Xi.T @ yi / NOISE_SD**2))
        log_w.append(lw)
    log_w = np.array(log_w)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    return {"slope": float(w @ np.array(means)[:, 0]), "intercept": float(w @ np.array(means)[:, 1]),
            "p_outlier": w @ configs.astype(float)}


def main(small: bool = False, out_dir=None):
    import arviz as az
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppl
    from inference import mcmc

    @ppl.gen
    def inlier(x, slope, intercept):
        return ppl.normal(slope * x + intercept, NOISE_SD) @ "y"

    @ppl.gen
    def outlier(x, slope, intercept):
        return ppl.normal(0.0 * x, OUTLIER_SD) @ "y"

    @ppl.gen
    def point(x, slope, intercept):
        is_outlier = ppl.flip(P_OUTLIER) @ "outlier"
        return ppl.cond(is_outlier, outlier, inlier)(x, slope, intercept) @ "obs"

    @ppl.gen
    def curve(xs):
        slope = ppl.normal(0.0, PRIOR_SD) @ "slope"
        intercept = ppl.normal(0.0, PRIOR_SD) @ "intercept"
        return ppl.vmap(point, in_axes=(0, None, None))(xs, slope, intercept) @ "points"

    xs_np, ys_np = data()
    xs, ys = jnp.asarray(xs_np), jnp.asarray(ys_np)
    obs = ppl.ChoiceMap({("points", "obs", "y"): ys})
    n_chains, n_draws, burn_in = (4, 500, 200) if small else (4, 1000, 300)
    # every chain starts with no outliers and the kernel moves the line first, so that the line
    # is fitted to all points before any point is called an outlier. Started with random flags
    # (or with the flags moved first), chains stay for thousands of steps in a minor mode where
    # the line is wrong and most points are called outliers (R-hat 1.5).
    start = obs | ppl.ChoiceMap({("points", "outlier"): jnp.zeros(len(xs_np), bool)})
    trace, _ = curve.generate(jax.random.key(0), start, xs)
    kernel = mcmc.cycle(mcmc.hmc(ppl.select("slope", "intercept"), step_size=0.02, n_leapfrog=10),
                        mcmc.gibbs(("points", "outlier")))
    res = mcmc.run(jax.random.key(1), kernel, trace, n_draws, n_chains=n_chains, burn_in=burn_in)

    exact = exact_posterior(xs_np, ys_np)
    slope, intercept = np.asarray(res.choices["slope"]), np.asarray(res.choices["intercept"])
    flags = np.asarray(res.choices["points", "outlier"]).astype(float)  # (chain, draw, point)

    print(f"curve fitting with outliers: {len(xs_np)} points, {n_chains} chains x {n_draws} draws")
    failures = []
    for name, draws in (("slope", slope), ("intercept", intercept)):
        se = float(az.mcse(draws, method="mean"))
        print(f"{name:10s} MCMC {draws.mean():6.3f} (mcse {se:.3f})   exact {exact[name]:6.3f}")
        rhat = float(az.rhat(draws))
        if rhat > 1.05:
            failures.append(f"{name}: chains disagree (R-hat {rhat:.3f})")
        if abs(draws.mean() - exact[name]) > 4 * se:
            failures.append(f"{name}: MCMC {draws.mean():.3f} vs exact {exact[name]:.3f} (4 mcse = {4 * se:.3f})")
    p_mcmc = flags.mean(axis=(0, 1))
    print("P(outlier) MCMC ", np.round(p_mcmc, 3))
    print("P(outlier) exact", np.round(exact["p_outlier"], 3))
    n_total = flags.shape[0] * flags.shape[1]
    for i, (p, q) in enumerate(zip(p_mcmc, exact["p_outlier"])):
        se = max(float(np.nan_to_num(az.mcse(flags[..., i], method="mean"))), np.sqrt(q * (1 - q) / n_total))
        if abs(p - q) > 4 * se + 1e-6:
            failures.append(f"P(outlier {i}): MCMC {p:.4f} vs exact {q:.4f} (4 se = {4 * se:.4f})")

    fig, ax = plt.subplots(figsize=(6, 4))
    grid = np.linspace(-2.2, 2.2, 50)
    s_flat, i_flat = slope.ravel(), intercept.ravel()
    for j in np.linspace(0, len(s_flat) - 1, 40).astype(int):
        ax.plot(grid, s_flat[j] * grid + i_flat[j], color="tab:blue", alpha=0.08)
    ax.plot(grid, exact["slope"] * grid + exact["intercept"], "k--", label="exact posterior mean line")
    sc = ax.scatter(xs_np, ys_np, c=p_mcmc, cmap="coolwarm", vmin=0, vmax=1, zorder=3, edgecolor="k")
    fig.colorbar(sc, ax=ax, label="posterior P(outlier)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("Curve fitting with outliers (Gibbs + HMC)")
    ax.legend(loc="lower right")
    out_dir = out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "curve_fitting.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")

    if failures:
        raise AssertionError("curve fitting differs from the exact posterior: " + "; ".join(failures))
    return {"slope": float(slope.mean()), "intercept": float(intercept.mean()), "p_outlier": p_mcmc,
            "exact": exact, "plot": path}


if __name__ == "__main__":
    main()
