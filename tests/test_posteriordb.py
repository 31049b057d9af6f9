"""NUTS through traces against Stan reference posteriors from posteriordb (10 chains x 1,000
draws computed with Stan's NUTS). The data and each reference parameter's mean, sd and Monte
Carlo standard error are kept in ``tests/data/posteriordb.json.gz`` (summarised from the
posteriordb reference draws), so the test runs on a fresh clone.

Posterior means must agree within ``Z`` combined Monte Carlo standard errors (ours from ArviZ's
ESS, the reference's from its own draws). Statistical marker; reduced size unless
PPL_FULL_STATS=1.
"""

import gzip
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from inference import mcmc
from inference.diagnostics import mcmc as dg

FULL = os.environ.get("PPL_FULL_STATS") == "1"
Z = 4.0
pytestmark = pytest.mark.statistical
with gzip.open(pathlib.Path(__file__).parent / "data" / "posteriordb.json.gz", "rt") as _f:
    DB = json.load(_f)


def load(name):
    return DB[name]


def reference(name):
    return DB[name]  # per parameter: mean, sd, mcse of the Stan reference draws


def compare(ours: dict, ref: dict):
    for k, r in ref.items():
        a = np.asarray(ours[k], dtype=float)
        se = np.hypot(dg.mcse(a), r["mcse"])
        z = (a.mean() - r["mean"]) / se
        assert abs(z) < Z, f"{k}: ours {a.mean():.3f} vs Stan {r['mean']:.3f} (se {se:.3f}, z={z:.2f})"
        assert abs(a.std() / r["sd"] - 1) < 0.2, f"{k}: sd {a.std():.3f} vs Stan {r['sd']:.3f}"


@ppl.gen
def eight_schools(sigma):
    mu = ppl.normal(0.0, 5.0) @ "mu"
    tau = ppl.dist(nd.HalfCauchy(5.0)) @ "tau"
    theta_trans = ppl.normal(jnp.zeros(sigma.shape), 1.0) @ "theta_trans"
    theta = mu + tau * theta_trans
    ppl.normal(theta, sigma) @ "y"
    return theta


def test_eight_schools_noncentered_matches_stan():
    data = load("data-eight_schools")
    sigma = jnp.asarray(data["sigma"], jnp.float32)
    y = jnp.asarray(data["y"], jnp.float32)
    trs = mcmc.init_chains(jax.random.key(0), eight_schools, (sigma,), ppl.ChoiceMap({"y": y}), 4)
    n = 2500 if FULL else 1000
    res = mcmc.run(jax.random.key(1), mcmc.nuts(ppl.select("mu", "tau", "theta_trans")), trs, n, burn_in=500)
    mu, tau, tt = (np.asarray(res.choices[a]) for a in ("mu", "tau", "theta_trans"))
    ours = {"mu": mu, "tau": tau}
    theta = mu[..., None] + tau[..., None] * tt
    for j in range(8):
        ours[f"theta[{j + 1}]"] = theta[..., j]
    compare(ours, reference("reference-eight_schools-eight_schools_noncentered"))
    assert float(np.mean(res.info["diverging"])) < 0.02


@ppl.gen
def kidiq(mom_iq):
    beta = ppl.normal(jnp.zeros(2), 1000.0) @ "beta"  # Stan: flat; a very wide proper prior here
    sigma = ppl.dist(nd.HalfCauchy(2.5)) @ "sigma"
    ppl.normal(beta[0] + beta[1] * mom_iq, sigma) @ "kid_score"


def test_kidiq_dense_mass_matches_stan():
    data = load("data-kidiq")
    x = jnp.asarray(data["mom_iq"], jnp.float32)
    y = jnp.asarray(data["kid_score"], jnp.float32)
    trs = mcmc.init_chains(jax.random.key(0), kidiq, (x,), ppl.ChoiceMap({"kid_score": y}), 4)
    trs = jax.vmap(lambda t: kidiq.update(jax.random.key(0), t, ppl.ChoiceMap({"sigma": 20.0}), x)[0],
                   in_axes=(trs.batch_axes(0),), out_axes=trs.batch_axes(0))(trs)
    n = 2500 if FULL else 1000
    res = mcmc.run(jax.random.key(2), mcmc.nuts(ppl.select("beta", "sigma"), dense_mass=True), trs, n,
                   burn_in=1000)
    beta, sigma = np.asarray(res.choices["beta"]), np.asarray(res.choices["sigma"])
    compare({"beta[1]": beta[..., 0], "beta[2]": beta[..., 1], "sigma": sigma},
            reference("reference-kidiq-kidscore_momiq"))
