"""MCMC kernels, combinators and runner: invariance on conjugate models (tolerances from the
Monte Carlo standard error via ArviZ's ESS), custom proposals vs exact enumeration, Gibbs,
determinism, independent chains, no recompilation, and errors naming the site.

Longer statistical checks (SBC, every kernel on every conjugate model, NUTS vs NumPyro) are in
``test_mcmc_stats.py``; posteriordb references in ``test_posteriordb.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ppl
from inference import mcmc
from inference.diagnostics import mcmc as dg
from inference.diagnostics.checks import CompileCounter

from _conjugate import (  # noqa: F401 - shared with test_mcmc_stats.py
    Z, normal_normal, normal_normal_exact, beta_binomial, gamma_poisson, std_normal_2d,
    YS, K_OBS, N_BIN, POIS, nn_trace, bb_trace, gp_trace, check_moments,
)


# ------------------------------------------------------------------------------ invariance
def test_mh_selection_normal_normal():
    m, v = normal_normal_exact(np.asarray(YS))
    res = mcmc.run(jax.random.key(1), mcmc.mh(ppl.select("mu")), nn_trace(), 3000, n_chains=2, burn_in=100)
    check_moments(res.choices["mu"], m, v)


@ppl.gen
def drift_proposal(tr, step):
    ppl.normal(tr.choices["mu"] + 0.2, step) @ "mu"  # asymmetric: always drifts right


def test_mh_asymmetric_proposal_normal_normal():
    m, v = normal_normal_exact(np.asarray(YS))
    res = mcmc.run(jax.random.key(2), mcmc.mh(drift_proposal, (0.6,)), nn_trace(), 3000, n_chains=2, burn_in=100)
    check_moments(res.choices["mu"], m, v)


# NUTS on the beta-binomial's unit-interval site (moments and support): test_mcmc_stats.py's kernel matrix


def test_mala_gamma_poisson_positive():
    a, r = 3 + int(POIS.sum()), 1 + len(POIS)
    res = mcmc.run(jax.random.key(4), mcmc.mala("lam", 0.3, adapt_step_size=True), gp_trace(), 2000,
                   n_chains=2, burn_in=300)
    check_moments(res.choices["lam"], a / r, a / r**2)
    rate = np.asarray(res.acceptance_rate())
    assert np.all((rate > 0.35) & (rate < 0.8)), rate  # adapted towards 0.574


def test_hmc_vector_site_2d_standard_normal():
    tr = std_normal_2d.simulate(jax.random.key(0))
    res = mcmc.run(jax.random.key(5), mcmc.hmc("x", 0.4, 6), tr, 2000, n_chains=2, burn_in=50)
    x = np.asarray(res.choices["x"])
    assert x.shape == (2, 2000, 2)
    for i in range(2):
        check_moments(x[..., i], 0.0, 1.0)
    prod = x[..., 0] * x[..., 1]  # E[x0 x1] = 0: uncorrelated coordinates
    assert dg.mean_within_mcse(prod, 0.0, Z)[0]


# ------------------------------------------------------------------------------ gibbs
@ppl.gen
def discrete_mix(ys):
    z = ppl.categorical(probs=jnp.array([0.5, 0.3, 0.2])) @ "z"
    mu = ppl.normal(0.0, 3.0) @ "mu"
    locs = jnp.array([-2.0, 0.0, 2.0]) + mu
    ppl.normal(jnp.full(ys.shape, locs[z]), 1.0) @ "ys"


def test_gibbs_exact_conditional_matches_enumeration():
    ys = jnp.array([1.5, 2.5])
    tr = discrete_mix.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys, "mu": 0.4}), ys)[0]
    _, info = mcmc.gibbs("z")(jax.random.key(1), tr)
    locs = np.array([-2.0, 0.0, 2.0]) + 0.4
    lp = np.log([0.5, 0.3, 0.2]) + np.array([stats.norm.logpdf(np.asarray(ys), l, 1).sum() for l in locs])
    exact = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
    np.testing.assert_allclose(np.asarray(info["probs"]), exact, rtol=1e-4, atol=1e-6)


def test_cycle_gibbs_and_hmc_discrete_continuous():
    ys = jnp.array([1.5, 2.5, 2.0])
    tr = discrete_mix.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys}), ys)[0]
    k = mcmc.cycle(mcmc.gibbs("z"), mcmc.hmc("mu", 0.5, 4))
    res = mcmc.run(jax.random.key(6), k, tr, 3000, n_chains=2, burn_in=100)
    # exact marginal posterior of z: integrate mu analytically (ys | z ~ N(loc_z 1, I + 9 11^T))
    n = len(ys)
    cov = np.eye(n) + 9.0 * np.ones((n, n))
    lp = np.log([0.5, 0.3, 0.2]) + np.array(
        [stats.multivariate_normal.logpdf(np.asarray(ys), np.full(n, l), cov) for l in (-2.0, 0.0, 2.0)])
    exact = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
    z = np.asarray(res.choices["z"])
    for j in range(3):
        ok, score = dg.mean_within_mcse((z == j).astype(float), exact[j], Z)
        assert ok, (j, (z == j).mean(), exact[j], score)


def test_gibbs_vector_site_sweep():
    @ppl.gen
    def model():
        bits = ppl.flip(jnp.full((3,), 0.5)) @ "bits"
        ppl.normal(jnp.sum(bits).astype(jnp.float32), 0.3) @ "y"

    tr = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 3.0}))[0]
    res = mcmc.run(jax.random.key(7), mcmc.gibbs("bits"), tr, 400)
    assert res.choices["bits"].shape == (1, 400, 3)
    assert np.asarray(res.choices["bits"]).mean() > 0.9  # y = 3 strongly favours all ones


# ------------------------------------------------------------------------------ branch switching
@ppl.gen
def right():
    return ppl.normal(1.0, 1.0) @ "a"


@ppl.gen
def left():
    return ppl.normal(-1.0, 2.0) @ "a"


@ppl.gen
def branchy():
    c = ppl.flip(0.3) @ "c"
    a = ppl.cond(c, right, left)() @ "branch"
    ppl.normal(a, 0.5) @ "y"


@ppl.gen
def a_prop(mu, s):
    return ppl.normal(mu, s) @ "a"


@ppl.gen
def switch_with_value(tr, y):
    """Flip the branch and propose its continuous value from a data-driven (asymmetric) proposal."""
    ppl.flip(jnp.where(tr.choices["c"] == 1, 0.0, 1.0)) @ "c"
    a_prop(0.8 * y, 1.5) @ "branch"


@ppl.gen
def switch_only(tr):
    ppl.flip(jnp.where(tr.choices["c"] == 1, 0.0, 1.0)) @ "c"


@pytest.mark.parametrize("proposal", ["with_value", "predicate_only"])
def test_mh_proposal_branch_switch_matches_enumeration(proposal):
    y = 0.4
    p1 = 0.3 * stats.norm.pdf(y, 1, np.sqrt(1.25))
    p0 = 0.7 * stats.norm.pdf(y, -1, np.sqrt(4.25))
    exact = p1 / (p1 + p0)
    tr = branchy.generate(jax.random.key(0), ppl.ChoiceMap({"y": y}))[0]
    move = mcmc.mh(switch_with_value, (y,)) if proposal == "with_value" else mcmc.mh(switch_only)
    k = mcmc.cycle(move, mcmc.mh(ppl.select(("branch", "a"))))
    res = mcmc.run(jax.random.key(8), k, tr, 3000, n_chains=4)
    c = np.asarray(res.choices["c"]).astype(float)
    ok, score = dg.mean_within_mcse(c, exact, Z)
    assert ok, (c.mean(), exact, score)
    assert 0.1 < float(np.mean(res.acceptance_rate()[0])) < 0.9


# ------------------------------------------------------------------------------ runner
def test_determinism_and_independent_chains():
    k = mcmc.hmc("mu", 0.3, 3)
    tr = nn_trace()
    a = mcmc.run(jax.random.key(9), k, tr, 300, n_chains=4)
    b = mcmc.run(jax.random.key(9), k, tr, 300, n_chains=4)
    np.testing.assert_array_equal(np.asarray(a.choices["mu"]), np.asarray(b.choices["mu"]))
    x = np.asarray(a.choices["mu"])
    assert len({tuple(np.round(r[:5], 6)) for r in x}) == 4  # chains differ
    # chains are independent: correlation between chains' centred draws is ~0
    xc = x - x.mean()
    for i in range(3):
        r = np.corrcoef(xc[i], xc[i + 1])[0, 1]
        assert abs(r) < 4 / np.sqrt(300 / 5), r
    c = mcmc.run(jax.random.key(10), k, tr, 300, n_chains=4)
    assert not np.array_equal(np.asarray(c.choices["mu"]), x)


def test_no_recompilation_with_new_data_and_chunked_progress_is_bit_identical():
    k = mcmc.mh(ppl.select("mu"))
    tr = nn_trace()
    mcmc.run(jax.random.key(0), k, tr, 100, n_chains=2, burn_in=10)
    tr2 = normal_normal.generate(jax.random.key(1), ppl.ChoiceMap({"ys": YS + 1.0}), YS + 1.0)[0]
    with CompileCounter() as cc:
        mcmc.run(jax.random.key(3), k, tr2, 100, n_chains=2, burn_in=10)
    assert cc.count == 0
    full = mcmc.run(jax.random.key(4), k, tr, 100, n_chains=2, burn_in=10)
    chunked = mcmc.run(jax.random.key(4), k, tr, 100, n_chains=2, burn_in=10, progress=True, chunk_size=30)
    np.testing.assert_array_equal(np.asarray(full.choices["mu"]), np.asarray(chunked.choices["mu"]))


def test_result_holds_only_choices_and_exports_to_arviz():
    tr = nn_trace()
    res = mcmc.run(jax.random.key(11), mcmc.hmc("mu", 0.5, 3), tr, 200, n_chains=2, burn_in=100, thin=2)
    assert res.choices["mu"].shape == (2, 200)
    assert res.choices.addresses() == ["mu"]  # observations are kept once, not per draw
    assert res.fixed_choices["ys"].shape == (5,)
    assert set(res.info._fields) >= {"acceptance_rate", "accepted", "step_size", "diverging"}
    assert res.info["accept_prob"] is res.info.acceptance_rate  # the earlier dict-style name still works
    assert res.final_trace.args[0].shape == YS.shape  # model arguments not copied per chain
    idata = res.to_arviz()
    assert dict(idata.posterior["mu"].sizes) == {"chain": 2, "draw": 200}
    assert "acceptance_rate" in idata.sample_stats
    s = res.summary()
    assert list(s.index) == ["mu"]
    for col in ("mean", "sd", "ess_bulk", "ess_tail", "r_hat"):
        assert col in s.columns
    assert float(s.loc["mu", "r_hat"]) < 1.05


def test_batched_initial_traces_and_mixture_repeat():
    trs = mcmc.init_chains(jax.random.key(0), normal_normal, (YS,), ppl.ChoiceMap({"ys": YS}), 3)
    k = mcmc.mixture([mcmc.mh(ppl.select("mu")), mcmc.repeat(mcmc.mala("mu", 0.4), 2)], [0.5, 0.5])
    res = mcmc.run(jax.random.key(12), k, trs, 1000)
    m, v = normal_normal_exact(np.asarray(YS))
    assert res.choices["mu"].shape == (3, 1000)
    check_moments(res.choices["mu"], m, v)


def test_kernel_call_interface_works_in_smc_rejuvenate():
    from inference import smc

    ps = smc.init(jax.random.key(0), normal_normal, (YS,), ppl.ChoiceMap({"ys": YS}), 8)
    ps2, info = smc.rejuvenate(jax.random.key(1), ps, mcmc.hmc("mu", 0.3, 3))
    assert info["accept_prob"].shape == (8,)
    assert ps2.traces.choices["mu"].shape == (8,)


# ------------------------------------------------------------------------------ errors
def test_error_selection_names_no_address():
    with pytest.raises(ppl.ModelError, match="'nu'"):
        mcmc.run(jax.random.key(0), mcmc.mh(ppl.select("nu")), nn_trace(), 10)
    with pytest.raises(ppl.ModelError, match="'sigma'"):
        mcmc.hmc(ppl.select("mu", "sigma"))(jax.random.key(0), nn_trace())


def test_error_discrete_site_given_to_hmc_and_nuts():
    tr = discrete_mix.generate(jax.random.key(0), ppl.ChoiceMap({"ys": jnp.zeros(2)}), jnp.zeros(2))[0]
    with pytest.raises(ppl.ModelError, match="'z'.*discrete"):
        mcmc.nuts(ppl.select("z", "mu"))(jax.random.key(0), tr)
    with pytest.raises(ppl.ModelError, match="'z'.*discrete"):
        mcmc.run(jax.random.key(0), mcmc.hmc("z"), tr, 10)


def test_error_nonfinite_initial_density_names_site():
    @ppl.gen
    def model():
        s = ppl.normal(0.0, 1.0) @ "s"
        ppl.gamma(2.0, 1.0) @ "scale"
        return s

    tr = model.generate(jax.random.key(0), ppl.ChoiceMap({"scale": -1.0}))[0]
    with pytest.raises(ppl.ModelError, match="'scale'"):
        mcmc.run(jax.random.key(0), mcmc.mh(ppl.select("s")), tr, 10)


def test_error_gibbs_on_continuous_or_infinite_support():
    with pytest.raises(ppl.ModelError, match="'mu'"):
        mcmc.gibbs("mu")(jax.random.key(0), nn_trace())
    tr = gp_trace()
    with pytest.raises(ppl.ModelError, match="'ys'"):
        mcmc.gibbs("ys")(jax.random.key(0), tr)
