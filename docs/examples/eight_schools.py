"""Eight schools, non-centered, with NUTS; checked against Stan's reference posterior.

The classic hierarchical model of eight coaching experiments (Rubin 1981)::

    mu ~ Normal(0, 5),  tau ~ HalfCauchy(5),  theta_trans_j ~ Normal(0, 1)
    theta_j = mu + tau * theta_trans_j          (recorded with ppl.deterministic)
    y_j ~ Normal(theta_j, sigma_j)

NUTS (``inference.mcmc.nuts``) samples ``mu``, ``tau`` and ``theta_trans``; ``theta`` is a
deterministic site, so it is recomputed for every draw and stored with the draws.

Reference: the posteriordb summary of Stan's NUTS draws (10 chains x 1,000 draws) kept in
``tests/data/posteriordb.json.gz``. Every posterior mean must lie within 4 combined Monte Carlo
standard errors of Stan's (ours from the effective sample size, Stan's from its draws), and
every posterior sd within 4 of our MCSEs of the sd (plus 2% for Stan's own error).

Expected output (measured with small=True: 4 chains x 500 draws; Monte Carlo error aside)::

    eight schools: 4 chains x 500 draws (NUTS)
    param        ours   (mcse)    Stan  sd ours  sd Stan
    theta[1]     6.01 ( 0.134)    6.15     5.50     5.62
    ...
    mu           4.28 ( 0.081)    4.41     3.39     3.31
    tau          3.57 ( 0.087)    3.60     3.22     3.20
    divergent transitions: 0.05%
    Computed from 2000 posterior samples and 8 observations log-likelihood matrix.
             Estimate       SE
    elpd_loo   -30.74     1.38
    p_loo        0.87        -
    (ArviZ warns that one Pareto k is above 0.7, as usual for school 1)
    plot: eight_schools.png (posterior of theta_j by school, Stan's mean +- sd overlaid)

Run: ``python docs/examples/eight_schools.py`` or ``ppl examples eight_schools``.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import time
import warnings

import numpy as np

DATA = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "posteriordb.json.gz"


def load_posteriordb():
    with gzip.open(DATA, "rt") as f:
        db = json.load(f)
    return db["data-eight_schools"], db["reference-eight_schools-eight_schools_noncentered"]


def main(small: bool = False, out_dir=None):
    import arviz as az
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppl
    from inference import log_likelihood, mcmc
    from inference.diagnostics.mcmc import to_arviz

    data, ref = load_posteriordb()
    sigma = jnp.asarray(data["sigma"], jnp.float32)
    y = jnp.asarray(data["y"], jnp.float32)

    @ppl.gen
    def eight_schools(sigma):
        mu = ppl.normal(0.0, 5.0) @ "mu"
        tau = ppl.half_cauchy(5.0) @ "tau"
        theta_trans = ppl.normal(jnp.zeros(sigma.shape), 1.0) @ "theta_trans"
        theta = ppl.deterministic(mu + tau * theta_trans) @ "theta"
        ppl.normal(theta, sigma) @ "y"
        return theta

    obs = ppl.ChoiceMap({"y": y})
    n_chains, n_draws, burn_in = (4, 500, 300) if small else (4, 1000, 500)
    traces = mcmc.init_chains(jax.random.key(0), eight_schools, (sigma,), obs, n_chains)
    kernel = mcmc.nuts(ppl.select("mu", "tau", "theta_trans"))
    t0 = time.perf_counter()
    res = mcmc.run(jax.random.key(1), kernel, traces, n_draws, burn_in=burn_in)
    print(f"NUTS: {time.perf_counter() - t0:.1f} s (compilation included)")

    # pointwise log-likelihood from the sampled choices (the draws of the deterministic "theta"
    # are recomputed by the model, so they are left out of the draws given to it)
    latents = {a: res.choices[a] for a in ("mu", "tau", "theta_trans")}
    loglik = log_likelihood(eight_schools, latents, sigma, observations=obs, batch_ndims=2)
    idata = to_arviz(res, log_likelihood=loglik, observed_data=obs)
    ours = {"mu": np.asarray(res.choices["mu"]), "tau": np.asarray(res.choices["tau"])}
    theta = np.asarray(res.choices["theta"])
    for j in range(8):
        ours[f"theta[{j + 1}]"] = theta[..., j]

    print(f"eight schools: {n_chains} chains x {n_draws} draws (NUTS)")
    print(f"{'param':10s} {'ours':>6s} {'(mcse)':>8s} {'Stan':>7s} {'sd ours':>8s} {'sd Stan':>8s}")
    failures = []
    for name, r in ref.items():
        draws = ours[name]
        mean, se = draws.mean(), float(az.mcse(draws, method="mean"))
        sd, se_sd = draws.std(), float(az.mcse(draws, method="sd"))
        print(f"{name:10s} {mean:6.2f} ({se:6.3f}) {r['mean']:7.2f} {sd:8.2f} {r['sd']:8.2f}")
        z = (mean - r["mean"]) / np.hypot(se, r["mcse"])
        z_sd = (sd - r["sd"]) / np.hypot(se_sd, 0.02 * r["sd"])
        if abs(z) > 4.0:
            failures.append(f"{name}: mean {mean:.3f} vs Stan {r['mean']:.3f} (z={z:.1f})")
        if abs(z_sd) > 4.0:
            failures.append(f"{name}: sd {sd:.3f} vs Stan {r['sd']:.3f} (z={z_sd:.1f})")
    div = float(np.mean(np.asarray(res.info["diverging"])))
    print(f"divergent transitions: {100 * div:.2f}%")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    print(loo)

    # plot: posterior of each school's effect with Stan's mean +- sd
    fig, ax = plt.subplots(figsize=(7, 4))
    schools = np.arange(1, 9)
    ax.violinplot([theta[..., j].ravel() for j in range(8)], schools, showmeans=True)
    ax.errorbar(schools + 0.25, [ref[f"theta[{j}]"]["mean"] for j in schools],
                [ref[f"theta[{j}]"]["sd"] for j in schools], fmt="o", color="k", label="Stan mean ± sd")
    ax.plot(schools, y, "rx", label="observed y")
    ax.set_xlabel("school j")
    ax.set_ylabel("theta_j (treatment effect)")
    ax.set_title("Eight schools: NUTS posterior vs Stan reference")
    ax.legend()
    out_dir = out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "eight_schools.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")

    if failures:
        raise AssertionError("eight schools differs from Stan: " + "; ".join(failures))
    if div > 0.02:
        raise AssertionError(f"too many divergent transitions: {100 * div:.1f}%")
    return {"means": {k: float(v.mean()) for k, v in ours.items()}, "elpd_loo": float(loo.elpd_loo),
            "divergences": div, "plot": path}


if __name__ == "__main__":
    main()
