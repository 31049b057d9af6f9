"""Tempered SMC on a four-mode posterior, with its evidence against the exact normalizing constant.

The model: a 2-D latent ``x ~ Normal(0, 2^2 I)`` seen through a sign-ambiguous sensor::

    y_d ~ 0.5 Normal(x_d, 0.3^2) + 0.5 Normal(-x_d, 0.3^2),    d = 1, 2,  observed y = (2.0, -1.5)

so the posterior has four separated modes (x_d near +-y_d), each of mass 1/4 by symmetry.

Exact answers: integrating x out, each term gives the same Gaussian, so the evidence is
``Z = prod_d Normal(y_d; 0, 2^2 + 0.3^2)``; per coordinate the posterior is
``0.5 N(m_d, v) + 0.5 N(-m_d, v)`` with ``v = 1 / (1/4 + 1/0.09)``, ``m_d = v y_d / 0.09``, so
``E[x_d^2] = m_d^2 + v`` and the mass of each quadrant is exactly 1/4.

Inference: ``inference.smc.tempered`` (prior to posterior through ``p(x) p(y | x)^beta``, adaptive
resampling, random-walk MH moves with the pilot-adapted scale, whose Z-hat is unbiased), repeated
over independent runs. Checks, each a z-test over the runs (|mean - truth| < 4 standard errors
of the run-to-run spread): Z-hat / Z has mean 1 (the estimate is unbiased for Z, not for log Z),
every quadrant holds 1/4 of the posterior mass, and E[x_d^2] is exact.

Expected output (Monte Carlo error aside)::

    tempered SMC, 4-mode target: 20 runs x 500 particles, 20 temperatures
    exact log Z = -4.010;  log Z-hat: mean -4.015, sd 0.055 over runs
    mean Z-hat/Z = 0.997 (se 0.012)
    quadrant mass (++, +-, -+, --): [0.255 0.25  0.242 0.253] (exact 0.25 each)
    E[x^2]: [3.918 2.243] (exact [3.914 2.24 ])
    plot: tempered_bimodal.png (particles of one run over the exact posterior; log Z-hat of every run)

Run: ``python docs/examples/tempered_bimodal.py`` or ``ppl examples tempered_bimodal``.
"""

from __future__ import annotations

import os

import numpy as np

PRIOR_SD, NOISE_SD = 2.0, 0.3
Y = np.array([2.0, -1.5], np.float32)


def exact():
    """Exact log evidence, E[x_d^2] and the posterior's mode parameters (m_d, v)."""
    s2 = PRIOR_SD**2 + NOISE_SD**2
    log_z = float(np.sum(-0.5 * Y.astype(float) ** 2 / s2 - 0.5 * np.log(2 * np.pi * s2)))
    v = 1.0 / (1.0 / PRIOR_SD**2 + 1.0 / NOISE_SD**2)
    m = v * Y.astype(float) / NOISE_SD**2
    return {"log_z": log_z, "ex2": m**2 + v, "m": m, "v": v}


def main(small: bool = False, out_dir=None):
    import jax
    import jax.numpy as jnp
    import matplotlib
    import numpyro.distributions as nd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppl
    from inference import smc

    @ppl.gen
    def sensor():
        x = ppl.normal(jnp.zeros(2), PRIOR_SD) @ "x"
        locs = jnp.stack([x, -x], axis=-1)  # (2 coordinates, 2 mixture components)
        ambiguous = nd.MixtureSameFamily(nd.Categorical(probs=jnp.full((2, 2), 0.5)), nd.Normal(locs, NOISE_SD))
        return ppl.dist(ambiguous) @ "y"

    obs = ppl.ChoiceMap({"y": jnp.asarray(Y)})
    n_runs, n_particles, n_temps = (20, 500, 20) if small else (50, 2000, 30)
    ex = exact()
    log_z, quadrants, ex2, last = [], [], [], None
    for r in range(n_runs):
        out = smc.tempered(jax.random.key(r), sensor, (), obs, n_particles, n_temps=n_temps, n_mcmc=2)
        x = np.asarray(out.particles.traces.choices["x"])
        w = np.asarray(out.particles.normalized_weights(), np.float64)
        log_z.append(float(out.log_marginal_likelihood()))
        quadrants.append([w[(np.sign(x[:, 0]) == a) & (np.sign(x[:, 1]) == b)].sum()
                          for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))])
        ex2.append(w @ x**2)
        last = (x, w)
    log_z, quadrants, ex2 = np.array(log_z), np.array(quadrants), np.array(ex2)

    def z_test(name, values, truth):
        mean, se = values.mean(axis=0), values.std(axis=0, ddof=1) / np.sqrt(len(values))
        bad = np.abs(mean - truth) > 4 * se
        return [f"{name}: {np.round(mean, 4)} vs exact {np.round(truth, 4)} (4 se = {np.round(4 * se, 4)})"] if bad.any() else []

    ratio = np.exp(log_z - ex["log_z"])
    print(f"tempered SMC, 4-mode target: {n_runs} runs x {n_particles} particles, {n_temps} temperatures")
    print(f"exact log Z = {ex['log_z']:.3f};  log Z-hat: mean {log_z.mean():.3f}, sd {log_z.std(ddof=1):.3f} over runs")
    print(f"mean Z-hat/Z = {ratio.mean():.3f} (se {ratio.std(ddof=1) / np.sqrt(n_runs):.3f})")
    print("quadrant mass (++, +-, -+, --):", np.round(quadrants.mean(axis=0), 3), "(exact 0.25 each)")
    print("E[x^2]:", np.round(ex2.mean(axis=0), 3), f"(exact {np.round(ex['ex2'], 3)})")
    failures = z_test("Z-hat/Z", ratio, 1.0) + z_test("quadrant mass", quadrants, 0.25) + z_test("E[x^2]", ex2, ex["ex2"])

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    g = np.linspace(-3.5, 3.5, 200)
    dens = [0.5 * np.exp(-0.5 * (g - m) ** 2 / ex["v"]) + 0.5 * np.exp(-0.5 * (g + m) ** 2 / ex["v"]) for m in ex["m"]]
    a1.contour(g, g, np.outer(dens[1], dens[0]), levels=5, colors="k", linewidths=0.7)
    x, w = last
    a1.scatter(x[:, 0], x[:, 1], s=4 + 2000 * w, alpha=0.3, label="particles (last run)")
    a1.set_xlabel("x_1")
    a1.set_ylabel("x_2")
    a1.set_title("posterior (exact contours) and SMC particles")
    a1.legend(loc="upper right")
    a2.hist(log_z, bins=10, color="tab:blue", alpha=0.7, label="log Z-hat per run")
    a2.axvline(ex["log_z"], color="k", ls="--", label="exact log Z")
    a2.set_xlabel("log evidence")
    a2.set_ylabel("number of runs")
    a2.set_title("evidence estimates")
    a2.legend()
    out_dir = out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tempered_bimodal.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")

    if failures:
        raise AssertionError("tempered SMC differs from the exact answer: " + "; ".join(failures))
    return {"log_z_hat": log_z, "log_z": ex["log_z"], "quadrants": quadrants.mean(axis=0),
            "ex2": ex2.mean(axis=0), "plot": path}


if __name__ == "__main__":
    main()
