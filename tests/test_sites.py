"""ppl.factor and ppl.deterministic: sites that are not random choices.

A factor's log weight enters every weight exactly as an observed distribution site with the same
log density would (checked against such a twin model, bit for bit or to float rounding); a
deterministic value sits beside the choices, is recomputed by every edit and is invisible to
selections and kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import importance, mcmc, vi
from inference.diagnostics.mcmc import ess
from ppl import ChoiceMap, gen, select

YS = jnp.array([0.3, 1.1, 0.8])
SIGMA = 0.7


def _normal_loglik(mu, ys):
    return jnp.sum(-0.5 * ((ys - mu) / SIGMA) ** 2 - jnp.log(SIGMA) - 0.5 * jnp.log(2 * jnp.pi))


@gen
def with_factor(ys):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    ppl.deterministic(jnp.exp(mu)) @ "exp_mu"
    ppl.factor(_normal_loglik(mu, ys)) @ "lik"
    return mu


@gen
def with_observation(ys):  # the twin: the same joint density, the likelihood as an observed site
    mu = ppl.normal(0.0, 1.0) @ "mu"
    ppl.normal(jnp.full(ys.shape, mu), SIGMA) @ "lik"
    return mu


@gen
def tempered(beta, ys):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    ppl.factor(beta * _normal_loglik(mu, ys)) @ "lik"
    return mu


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ------------------------------------------------------------------ factor
def test_factor_is_in_score_and_scores_not_in_choices():
    tr = with_factor.simulate(jax.random.key(0), YS)
    mu = tr.choices["mu"]
    assert tr.choices.addresses() == ["mu"]
    close(tr.get_scores()["lik"], _normal_loglik(mu, YS))
    close(tr.score, tr.get_scores()["mu"] + tr.get_scores()["lik"])
    close(tr.project(select("lik")), _normal_loglik(mu, YS))
    lp, _ = with_factor.assess(tr.choices, YS)  # assess(trace.choices) needs nothing at "lik"
    close(lp, tr.score)


def _weights(model, obs):
    @jax.jit
    def run(k):
        tr, w = model.generate(k, obs, YS)
        _, uw, _ = model.update(k, tr, ChoiceMap({"mu": 0.4}), YS)
        _, rw, _ = model.regenerate(k, tr, select("mu"), YS)
        return tr.choices["mu"], tr.score, w, uw, rw

    return run(jax.random.key(1))


def test_factor_weights_equal_an_observed_twin():
    """generate, update (density ratio) and regenerate (MH ratio of the prior proposal) weights and
    the importance-sampling evidence of the factor model are those of its observed twin."""
    obs = ChoiceMap({"lik": YS})
    f, o = _weights(with_factor, ChoiceMap.empty()), _weights(with_observation, obs)
    assert float(f[0]) == float(o[0])  # same key, same address: the same draw of mu
    for a, b in zip(f[1:], o[1:]):
        close(a, b)
    k = jax.random.key(1)
    lz_f = importance.log_marginal_likelihood(k, with_factor, (YS,), ChoiceMap.empty(), 200)
    lz_o = importance.log_marginal_likelihood(k, with_observation, (YS,), obs, 200)
    close(lz_f, lz_o, 1e-4)


@gen
def vi_factor(params, ys):
    return with_factor(ys) @ "m"


@gen
def vi_observation(params, ys):
    return with_observation(ys) @ "m"


def test_factor_enters_hmc_and_elbo_like_an_observed_twin():
    obs = ChoiceMap({"lik": YS})
    k = jax.random.key(2)
    tr_f, _ = with_factor.generate(k, ChoiceMap.empty(), YS)
    tr_o, _ = with_observation.generate(k, obs, YS)
    kern = mcmc.hmc(select("mu"), 0.4, 5)
    res_f = mcmc.run(jax.random.key(3), kern, tr_f, 60)
    res_o = mcmc.run(jax.random.key(3), kern, tr_o, 60)
    close(res_f.choices["mu"], res_o.choices["mu"], 1e-4)  # same trajectory, up to float rounding

    @gen
    def guide_mu(m):
        return ppl.normal(m, 0.5) @ "mu"

    @gen
    def guide(m):
        return guide_mu(m) @ "m"

    e_f = vi.elbo(vi_factor, guide).estimate(jax.random.key(4), 0.3, ChoiceMap.empty(), (YS,))
    e_o = vi.elbo(vi_observation, guide).estimate(jax.random.key(4), 0.3, ChoiceMap({("m", "lik"): YS}), (YS,))
    close(e_f, e_o, 1e-4)


def test_tempered_factor_weights_are_linear_in_beta():
    k = jax.random.key(5)
    c = ChoiceMap({"mu": 0.2})
    ll = float(_normal_loglik(0.2, YS))
    for beta in (0.0, 0.3, 1.0):
        tr, w = tempered.generate(k, c, beta, YS)
        close(w, jax.scipy.stats.norm.logpdf(0.2) + beta * ll)
        close(tr.get_scores()["lik"], beta * ll)
    # changing the temperature with update: weight = (beta' - beta) * loglik
    tr, _ = tempered.generate(k, c, 0.25, YS)
    tr2, w, discard = tempered.update(k, tr, ChoiceMap.empty(), 0.75, YS)
    close(w, 0.5 * ll)
    assert discard.is_empty()


def test_factor_sums_arrays_and_allows_minus_inf():
    @gen
    def m():
        x = ppl.normal(0.0, 1.0) @ "x"
        ppl.factor(jnp.array([[-1.0, -2.0], [0.5, 0.0]])) @ "f"
        ppl.factor(jnp.where(x > 100.0, 0.0, -jnp.inf)) @ "hard"
        return x

    tr = m.simulate(jax.random.key(0))
    close(tr.get_scores()["f"], -2.5)
    assert float(tr.score) == -np.inf


def test_factor_and_deterministic_cannot_be_constrained():
    k = jax.random.key(0)
    tr = with_factor.simulate(k, YS)
    for addr in ("lik", "exp_mu"):
        c = ChoiceMap({addr: 1.0})
        with pytest.raises(ppl.AddressError, match=repr(addr)):
            with_factor.generate(k, c, YS)
        with pytest.raises(ppl.AddressError, match=repr(addr)):
            with_factor.update(k, tr, c, YS)
        with pytest.raises(ppl.AddressError, match=repr(addr)):
            with_factor.assess(tr.choices | c, YS)
        with pytest.raises(ppl.AddressError, match=repr(addr)):  # not a choice: nothing to select
            with_factor.regenerate(k, tr, select(addr), YS)


def test_factor_bad_values():
    @gen
    def text():
        ppl.factor("abc") @ "f"

    @gen
    def boolean():
        ppl.factor(jnp.array(True)) @ "f"

    for m in (text, boolean):
        with pytest.raises(ppl.ModelError, match="'f'"):
            m.simulate(jax.random.key(0))

    @gen
    def nan(x):
        ppl.factor(jnp.log(x)) @ "bad"

    nan.simulate(jax.random.key(0), -1.0)  # outside debug mode: no host check
    with ppl.debug(), pytest.raises(ppl.NonFiniteError, match="'bad'"):
        jax.block_until_ready(nan.simulate(jax.random.key(0), -1.0).score)


def test_factor_in_branches_mh_and_gibbs_match_enumeration():
    """z ~ flip(1/2); branch a adds factor -1, branch b factor -3 (at different addresses):
    p(z = 1) = e^-1 / (e^-1 + e^-3). Moves that switch the branch must count both factors."""

    @gen
    def a():
        ppl.factor(-1.0) @ "fa"
        return 0.0

    @gen
    def b():
        ppl.factor(-3.0) @ "fb"
        return 0.0

    @gen
    def m():
        z = ppl.flip(0.5) @ "z"
        return ppl.cond(z, a, b)() @ "c"

    exact = np.exp(-1) / (np.exp(-1) + np.exp(-3))
    tr = m.simulate(jax.random.key(0))
    for kern in (mcmc.mh(select("z")), mcmc.gibbs("z")):
        z = np.asarray(mcmc.run(jax.random.key(1), kern, tr, 1000, n_chains=4).choices["z"], float)
        se = np.sqrt(exact * (1 - exact) / ess(z))  # standard error from the effective sample size
        assert abs(z.mean() - exact) < 4 * se, (type(kern).__name__, z.mean(), exact, se)


# ------------------------------------------------------------------ deterministic
def test_deterministic_beside_choices():
    tr = with_factor.simulate(jax.random.key(0), YS)
    det = ppl.deterministics(tr)
    assert det.addresses() == ["exp_mu"]
    assert "exp_mu" not in tr.choices.addresses()
    close(det["exp_mu"], jnp.exp(tr.choices["mu"]))
    assert "exp_mu" not in tr.get_scores().addresses()  # score 0, no density
    # generate from the choices reproduces it; update and regenerate recompute it
    tr2, _ = with_factor.generate(jax.random.key(9), tr.choices, YS)
    close(ppl.deterministics(tr2)["exp_mu"], det["exp_mu"])
    tr3, w, discard = with_factor.update(jax.random.key(1), tr, ChoiceMap({"mu": 0.5}), YS)
    close(ppl.deterministics(tr3)["exp_mu"], jnp.exp(0.5))
    assert discard.addresses() == ["mu"]
    tr4, _, _ = with_factor.regenerate(jax.random.key(2), tr, select("mu"), YS)
    close(ppl.deterministics(tr4)["exp_mu"], jnp.exp(tr4.choices["mu"]))
    assert ppl.deterministics(with_observation.simulate(jax.random.key(0), YS)).is_empty()


def test_deterministic_returns_value_and_is_ignored_by_gradients():
    @gen
    def m():
        x = ppl.normal(0.0, 1.0) @ "x"
        y = ppl.deterministic(3.0 * x) @ "y"
        return ppl.normal(y, 1.0) @ "obs"

    tr = m.simulate(jax.random.key(0))
    close(tr.retval, tr.choices["obs"])
    g = jax.grad(lambda c: m.assess(c)[0])(tr.choices)
    assert g.addresses() == ["obs", "x"]
    x, o = tr.choices["x"], tr.choices["obs"]
    close(g["x"], -x + 3.0 * (o - 3.0 * x))  # d/dx of log N(x) + log N(obs; 3x)


def test_deterministic_under_combinators():
    @gen
    def step(c, _):
        x = ppl.normal(c, 1.0) @ "x"
        ppl.deterministic(2.0 * x) @ "d"
        return x, x

    tr = ppl.scan(step, length=5).simulate(jax.random.key(0), 0.0, None)
    close(ppl.deterministics(tr)["d"], 2.0 * tr.choices["x"])

    @gen
    def pos():
        x = ppl.half_normal(1.0) @ "x"
        return ppl.deterministic(x) @ "d"

    @gen
    def neg():
        x = ppl.half_normal(1.0) @ "x"
        return ppl.deterministic(-x) @ "d"

    @gen
    def m():
        z = ppl.flip(0.5) @ "z"
        return ppl.cond(z, pos, neg)() @ "c"

    trs = jax.vmap(lambda k: m.simulate(k))(jax.random.split(jax.random.key(1), 8))
    d = ppl.deterministics(trs)["c", "d"]
    vals = d.value if isinstance(d, ppl.Masked) else d
    x = trs.choices["c", "x"]
    x = x.value if isinstance(x, ppl.Masked) else x
    z = np.asarray(trs.choices["z"]).astype(bool)
    close(vals, np.where(z, 1.0, -1.0) * np.asarray(x))


def test_kernels_never_move_deterministic_and_keep_it_consistent():
    tr, _ = with_factor.generate(jax.random.key(0), ChoiceMap.empty(), YS)
    # select_all: every choice (deterministic sites are not choices, so HMC never sees them)
    kern = mcmc.cycle(mcmc.hmc(ppl.select_all(), 0.3, 5), mcmc.mh(select("mu")))
    res = mcmc.run(jax.random.key(1), kern, tr, 20, n_chains=2, burn_in=5)
    # stored beside the moved choices (recomputed per draw, never moved)
    np.testing.assert_allclose(res.choices["exp_mu"], np.exp(res.choices["mu"]), rtol=1e-5)
    fin = res.final_trace
    close(ppl.deterministics(fin)["exp_mu"], jnp.exp(fin.choices["mu"]))
    np.testing.assert_array_equal(np.asarray(res.choices["mu"][:, -1]), np.asarray(fin.choices["mu"]))


def test_mcmc_run_stores_deterministic_values_per_draw():
    """mcmc.run's draws (and ArviZ's posterior) include deterministic sites, recomputed per draw."""
    from inference import mcmc

    @ppl.gen
    def m():
        mu = ppl.normal(0.0, 1.0) @ "mu"
        ppl.deterministic(jnp.exp(mu)) @ "exp_mu"
        ppl.normal(mu, 1.0) @ "y"

    tr, _ = m.generate(jax.random.key(0), ppl.ChoiceMap({"y": 1.0}))
    res = mcmc.run(jax.random.key(1), mcmc.hmc(ppl.select("mu")), tr, 30, n_chains=2, burn_in=5, progress=False)
    assert sorted(res.choices.addresses()) == ["exp_mu", "mu"]
    assert res.choices["exp_mu"].shape == (2, 30)
    np.testing.assert_allclose(res.choices["exp_mu"], np.exp(res.choices["mu"]), rtol=1e-6)
    assert "exp_mu" in res.to_arviz().posterior.data_vars
