"""A Gaussian mixture with its assignments summed out exactly (``inference.enum.marginalize``),
NUTS on the component means, and the assignments' posterior from ``infer_discrete``; checked
against a grid (quadrature) posterior.

The model (30 points, two unit-variance components, weights 0.6 / 0.4)::

    mu ~ Normal([-2, 2], 1.5)                   (the asymmetric prior orders the components)
    for each point i (one point.repeat(30)):
        z_i ~ Bernoulli(0.4)
        x_i ~ Normal(mu[z_i], 1)                observed

``marginalize(gmm, ("points", "z"))`` is a generative function without the ``z`` choices whose
density sums them out (per point, ``O(N K)``), so gradient MCMC runs on it unchanged;
``infer_discrete(..., probs=True)`` gives ``P(z_i = 1 | mu, x)`` for a draw, and averaged over the
NUTS draws it estimates ``P(z_i = 1 | x)`` (Rao-Blackwellized).

Reference: the posterior of the two means is two-dimensional, so it is computed exactly on a
241 x 241 grid over [-6, 6]^2 (the likelihood of every grid point is a product of two-term
mixture densities), and ``P(z_i = 1 | x)`` is the grid average of the per-point responsibility.
The posterior has a second, label-switched mode (``mu[0] > mu[1]``) of mass about 6e-4 that the
chains never reach; the reference is restricted to ``mu[0] < mu[1]`` (unrestricted, every
``P(z_i = 1 | x)`` moves by about 6e-4, many Monte Carlo standard errors).

Checks: the posterior means of ``mu`` and every ``P(z_i = 1 | x)`` within 4 Monte Carlo
standard errors (ESS-based) of the grid values, and the posterior sds within 4 MCSEs of the sd.

Expected output (small=True; Monte Carlo error aside)::

    Gaussian mixture, 30 points, assignments enumerated; NUTS 4 chains x 500 draws
    label-switched mode (mu[0] > mu[1]): exact mass 5.7e-04, fraction of NUTS draws there 0.0e+00; compared on mu[0] < mu[1]
    mu[0]  NUTS -2.015 (mcse 0.006)  exact -2.015    sd 0.259 (exact 0.258)
    mu[1]  NUTS  1.827 (mcse 0.008)  exact  1.832    sd 0.275 (exact 0.273)
    P(z_i = 1 | x): max |NUTS - exact| = 0.0005 (largest |z| = 1.16)
    plot: gaussian_mixture.png (data with responsibilities; posterior of mu vs grid contours)

Run: ``python docs/examples/gaussian_mixture.py`` or ``ppl examples gaussian_mixture``.
"""

from __future__ import annotations

import os

import numpy as np

N, W1, PRIOR_LOC, PRIOR_SD = 30, 0.4, np.array([-2.0, 2.0]), 1.5


def data():
    rng = np.random.default_rng(3)
    z = np.arange(N) >= 18
    return np.where(z, 1.5, -1.5) + rng.standard_normal(N), z


def _log_n(x, m):
    return -0.5 * (x - m) ** 2 - 0.5 * np.log(2 * np.pi)


def grid_posterior(xs, grid=np.linspace(-6.0, 6.0, 241)):
    """Exact posterior moments of mu and P(z_i = 1 | x) by quadrature on a grid."""
    m0, m1 = np.meshgrid(grid, grid, indexing="ij")
    a = np.log(1 - W1) + _log_n(xs[None, None, :], m0[..., None])
    b = np.log(W1) + _log_n(xs[None, None, :], m1[..., None])
    lse = np.logaddexp(a, b)
    log_post = lse.sum(-1) + _log_n(m0 / PRIOR_SD, PRIOR_LOC[0] / PRIOR_SD) + _log_n(m1 / PRIOR_SD, PRIOR_LOC[1] / PRIOR_SD)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    # the label-switched mode (mu[0] > mu[1]) holds a small mass that the chains never visit: the
    # reference is the posterior restricted to mu[0] < mu[1], and the mass left out is reported
    switched = float(w[m0 > m1].sum())
    w = np.where(m0 < m1, w, 0.0)
    w /= w.sum()
    mean = np.array([(w * m0).sum(), (w * m1).sum()])
    sd = np.sqrt(np.array([(w * (m0 - mean[0]) ** 2).sum(), (w * (m1 - mean[1]) ** 2).sum()]))
    p_z = np.einsum("ij,ijn->n", w, np.exp(b - lse))
    return {"mean": mean, "sd": sd, "p_z": p_z, "grid": grid, "w": w, "switched_mass": switched}


def main(small: bool = False, out_dir=None):
    import arviz as az
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppl
    from inference import mcmc
    from inference.enum import infer_discrete, marginalize

    @ppl.gen
    def point(mu):
        z = ppl.bernoulli(probs=W1) @ "z"
        return ppl.normal(mu[z], 1.0) @ "x"

    @ppl.gen
    def gmm():
        mu = ppl.normal(jnp.asarray(PRIOR_LOC, jnp.float32), PRIOR_SD) @ "mu"
        return point.repeat(N)(mu) @ "points"

    xs_np, _ = data()
    obs = ppl.ChoiceMap({("points", "x"): jnp.asarray(xs_np, jnp.float32)})
    marginal = marginalize(gmm, ("points", "z"))
    n_chains, n_draws = (4, 500) if small else (4, 2000)
    # every chain starts at the prior mean (in the mode mu[0] < mu[1]); the NUTS steps of the
    # chains differ by their keys
    start, _ = marginal.generate(jax.random.key(0), obs | ppl.ChoiceMap({"mu": jnp.asarray(PRIOR_LOC, jnp.float32)}))
    res = mcmc.run(jax.random.key(1), mcmc.nuts(ppl.select("mu")), start, n_draws, n_chains=n_chains, burn_in=300)
    mu = np.asarray(res.choices["mu"], np.float64)                   # (chain, draw, 2)

    def responsibilities(mu_draw):
        probs = infer_discrete(jax.random.key(2), marginal, obs | ppl.ChoiceMap({"mu": mu_draw}), probs=True)
        return probs["points", "z"][..., 1]                            # P(z_i = 1 | mu, x)

    resp = np.asarray(jax.jit(jax.vmap(jax.vmap(responsibilities)))(jnp.asarray(mu, jnp.float32)), np.float64)

    ex = grid_posterior(xs_np)
    failures = []
    print(f"Gaussian mixture, {N} points, assignments enumerated; NUTS {n_chains} chains x {n_draws} draws")
    print(f"label-switched mode (mu[0] > mu[1]): exact mass {ex['switched_mass']:.1e}, "
          f"fraction of NUTS draws there {np.mean(mu[..., 0] > mu[..., 1]):.1e}; compared on mu[0] < mu[1]")
    if np.any(mu[..., 0] > mu[..., 1]):
        failures.append("some draws are in the label-switched mode, which the reference leaves out")
    for k in range(2):
        d = mu[..., k]
        se, se_sd = float(az.mcse(d, method="mean")), float(az.mcse(d, method="sd"))
        print(f"mu[{k}]  NUTS {d.mean():6.3f} (mcse {se:.3f})  exact {ex['mean'][k]:6.3f}    "
              f"sd {d.std():.3f} (exact {ex['sd'][k]:.3f})")
        if abs(d.mean() - ex["mean"][k]) > 4 * se:
            failures.append(f"mu[{k}] mean {d.mean():.3f} vs exact {ex['mean'][k]:.3f} (4 mcse = {4 * se:.3f})")
        if abs(d.std() - ex["sd"][k]) > 4 * se_sd:
            failures.append(f"mu[{k}] sd {d.std():.3f} vs exact {ex['sd'][k]:.3f} (4 mcse = {4 * se_sd:.3f})")
    p_mcmc = resp.mean(axis=(0, 1))
    se_p = np.array([float(az.mcse(resp[..., i], method="mean")) for i in range(N)])
    z_p = (p_mcmc - ex["p_z"]) / np.maximum(se_p, 1e-6)
    print(f"P(z_i = 1 | x): max |NUTS - exact| = {np.abs(p_mcmc - ex['p_z']).max():.4f} "
          f"(largest |z| = {np.abs(z_p).max():.2f})")
    bad = np.flatnonzero(np.abs(p_mcmc - ex["p_z"]) > 4 * se_p + 1e-6)
    failures += [f"P(z_{i} = 1): {p_mcmc[i]:.4f} vs exact {ex['p_z'][i]:.4f} (4 mcse = {4 * se_p[i]:.4f})" for i in bad]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    order = np.argsort(xs_np)
    a1.plot(xs_np[order], ex["p_z"][order], "k-", label="exact (grid)")
    a1.plot(xs_np[order], p_mcmc[order], "o", ms=4, label="NUTS + infer_discrete")
    a1.set_xlabel("data point x_i")
    a1.set_ylabel("P(z_i = 1 | x)")
    a1.set_title("assignment probabilities")
    a1.legend()
    g = ex["grid"]
    a2.contour(g, g, ex["w"].T, levels=6, colors="k", linewidths=0.7)
    a2.plot(mu[..., 0].ravel()[::4], mu[..., 1].ravel()[::4], ".", ms=2, alpha=0.4, label="NUTS draws")
    a2.set_xlim(ex["mean"][0] - 4 * ex["sd"][0], ex["mean"][0] + 4 * ex["sd"][0])
    a2.set_ylim(ex["mean"][1] - 4 * ex["sd"][1], ex["mean"][1] + 4 * ex["sd"][1])
    a2.set_xlabel("mu[0]")
    a2.set_ylabel("mu[1]")
    a2.set_title("posterior of the means (grid contours)")
    a2.legend()
    out_dir = out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gaussian_mixture.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")

    if failures:
        raise AssertionError("Gaussian mixture differs from the exact answer: " + "; ".join(failures))
    return {"mu_mean": mu.mean(axis=(0, 1)), "exact_mean": ex["mean"], "p_z": p_mcmc, "plot": path}


if __name__ == "__main__":
    main()
