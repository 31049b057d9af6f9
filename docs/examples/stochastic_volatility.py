"""Stochastic volatility: particle-filter log-likelihood and PMMH for the persistence parameter,
both checked against an exact grid (quadrature) filter.

The model (a ``ppl.scan`` state-space model, ``x_0 = 0``)::

    x_t ~ Normal(phi * x_{t-1}, 0.5)             log-volatility
    y_t ~ Normal(0, 0.7 * exp(x_t / 2))          returns, observed for t = 1..40
    phi ~ Normal(0.7, 0.2)                       (PMMH prior)

Reference: the state is one-dimensional, so the filter can be computed exactly by quadrature on a
fine grid (601 points on [-5, 5]): ``log p(y | phi)`` to about 1e-6, and on a grid of 121 values
of ``phi`` the exact posterior of ``phi``.

Checks: (1) over 40 independent runs of ``smc.particle_filter`` (200 particles) at the true ``phi``,
the mean of Z-hat / Z is 1 within 4 standard errors (Z-hat is unbiased for Z); (2) ``smc.pmmh``
(4 chains, 100 particles per likelihood estimate) gives the exact posterior mean of ``phi`` within
4 Monte Carlo standard errors (ESS-based) and its sd within 25%.

Expected output (small=True; Monte Carlo error aside)::

    stochastic volatility: T = 40, true phi = 0.9
    exact log p(y | phi=0.9) = -37.591;  particle filter log Z-hat: mean -37.566, sd 0.195 (40 runs x 200 particles)
    mean Z-hat/Z = 1.044 (se 0.032)
    PMMH phi: mean 0.638 (mcse 0.011), sd 0.159; exact posterior mean 0.638, sd 0.161; acceptance 0.68
    plot: stochastic_volatility.png (filtered log-volatility vs the exact filter; posterior of phi)

Run: ``python docs/examples/stochastic_volatility.py`` or ``ppl examples stochastic_volatility``.
"""

from __future__ import annotations

import os

import numpy as np

SIGMA, BETA, PHI_TRUE, T = 0.5, 0.7, 0.9, 40
PRIOR_MEAN, PRIOR_SD = 0.7, 0.2


def data():
    rng = np.random.default_rng(1)
    x, ys = 0.0, []
    for _ in range(T):
        x = PHI_TRUE * x + SIGMA * rng.standard_normal()
        ys.append(BETA * np.exp(x / 2) * rng.standard_normal())
    return np.array(ys, np.float32)


def grid_filter(ys, phi, grid=np.linspace(-5.0, 5.0, 601)):
    """Exact (quadrature) filter: log p(y_1:T | phi) and the filtering means E[x_t | y_1:t]."""
    ys = np.asarray(ys, np.float64)
    dx = grid[1] - grid[0]
    trans = np.exp(-0.5 * ((grid[None, :] - phi * grid[:, None]) / SIGMA) ** 2) / (SIGMA * np.sqrt(2 * np.pi)) * dx
    pred = np.exp(-0.5 * (grid / SIGMA) ** 2) / (SIGMA * np.sqrt(2 * np.pi)) * dx  # x_1 | x_0 = 0
    log_z, means = 0.0, []
    for y in ys:
        sd = BETA * np.exp(grid / 2)
        lik = np.exp(-0.5 * (y / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
        post = pred * lik
        z = post.sum()
        log_z += np.log(z)
        post /= z
        means.append(post @ grid)
        pred = post @ trans
    return log_z, np.array(means)


def exact_phi_posterior(ys):
    phis = np.linspace(0.0, 1.2, 121)
    log_post = np.array([grid_filter(ys, p)[0] for p in phis]) - 0.5 * ((phis - PRIOR_MEAN) / PRIOR_SD) ** 2
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean = w @ phis
    return phis, w / (phis[1] - phis[0]), float(mean), float(np.sqrt(w @ (phis - mean) ** 2))


def main(small: bool = False, out_dir=None):
    import arviz as az
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppl
    from inference import smc

    @ppl.gen
    def sv_step(carry, _):
        x, phi = carry
        x = ppl.normal(phi * x, SIGMA) @ "x"
        ppl.normal(0.0, BETA * jnp.exp(x / 2)) @ "y"
        return (x, phi), None

    @ppl.gen
    def prior():
        return ppl.normal(PRIOR_MEAN, PRIOR_SD) @ "phi"

    ssm = ppl.scan(sv_step, length=T)
    ys = data()
    obs = ppl.ChoiceMap({"y": jnp.asarray(ys)})
    failures = []

    # (1) particle filter evidence at the true phi
    n_runs, n_particles = 40, 200
    exact_log_z, exact_means = grid_filter(ys, PHI_TRUE)
    log_z, filt = [], None
    for r in range(n_runs):
        res = smc.particle_filter(jax.random.key(r), ssm, ((0.0, PHI_TRUE), None), obs, n_particles)
        log_z.append(float(res.log_marginal_likelihood()))
        if filt is None:
            filt = np.asarray(res.filtered_mean(lambda ch: ch["x"]))
    log_z = np.array(log_z)
    ratio = np.exp(log_z - exact_log_z)
    se = ratio.std(ddof=1) / np.sqrt(n_runs)
    print(f"stochastic volatility: T = {T}, true phi = {PHI_TRUE}")
    print(f"exact log p(y | phi={PHI_TRUE}) = {exact_log_z:.3f};  particle filter log Z-hat: mean {log_z.mean():.3f}, "
          f"sd {log_z.std(ddof=1):.3f} ({n_runs} runs x {n_particles} particles)")
    print(f"mean Z-hat/Z = {ratio.mean():.3f} (se {se:.3f})")
    if abs(ratio.mean() - 1) > 4 * se:
        failures.append(f"Z-hat/Z: mean {ratio.mean():.3f}, exact 1 (4 se = {4 * se:.3f})")

    # (2) PMMH for phi
    n_chains, n_samples = (4, 400) if small else (4, 2000)
    # the chains run in one compiled program (n_chains=), each from its own prior draw
    out = smc.pmmh(jax.random.key(100), prior, ssm, lambda phi: ((0.0, phi), None), obs,
                   n_particles=100, n_samples=n_samples, step_size=0.15, burn_in=100, n_chains=n_chains)
    chains = np.asarray(out.choices["phi"], np.float64)                # (chain, draw)
    acc = np.asarray(out.acceptance_rate())
    phis, dens, post_mean, post_sd = exact_phi_posterior(ys)
    mcse = float(az.mcse(chains, method="mean"))
    print(f"PMMH phi: mean {chains.mean():.3f} (mcse {mcse:.3f}), sd {chains.std():.3f}; exact posterior mean "
          f"{post_mean:.3f}, sd {post_sd:.3f}; acceptance {np.mean(acc):.2f}")
    if abs(chains.mean() - post_mean) > 4 * mcse:
        failures.append(f"PMMH mean {chains.mean():.3f} vs exact {post_mean:.3f} (4 mcse = {4 * mcse:.3f})")
    if abs(chains.std() / post_sd - 1) > 0.25:
        failures.append(f"PMMH sd {chains.std():.3f} vs exact {post_sd:.3f}")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    t = np.arange(1, T + 1)
    a1.plot(t, exact_means, "k-", label="exact filter E[x_t | y_1:t]")
    a1.plot(t, filt, "o", ms=3, color="tab:blue", label=f"particle filter ({n_particles} particles)")
    a1.plot(t, np.log(ys.astype(float) ** 2 / BETA**2), "x", color="gray", ms=3, label="log(y_t^2 / beta^2)")
    a1.set_xlabel("time t")
    a1.set_ylabel("log-volatility x_t")
    a1.set_title("filtering at the true phi")
    a1.legend(fontsize=8)
    a2.hist(chains.ravel(), bins=40, density=True, alpha=0.6, label="PMMH draws")
    a2.plot(phis, dens, "k-", label="exact posterior (grid filter)")
    a2.axvline(PHI_TRUE, color="tab:red", ls="--", label="true phi")
    a2.set_xlabel("phi")
    a2.set_ylabel("posterior density")
    a2.set_title("PMMH for the persistence phi")
    a2.legend(fontsize=8)
    out_dir = out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "stochastic_volatility.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")

    if failures:
        raise AssertionError("stochastic volatility differs from the exact answer: " + "; ".join(failures))
    return {"log_z_hat": log_z, "exact_log_z": exact_log_z, "phi_mean": float(chains.mean()),
            "exact_phi_mean": post_mean, "plot": path}


if __name__ == "__main__":
    main()
