"""mcmc.involutive: exact acceptance ratios of single moves, stationary distributions against exact
posteriors (reversible jump between a one-mean and a two-mean Gaussian model; a scaling move on a
conjugate Gamma posterior), simulation-based calibration, and errors.

Statistical tests run at reduced size unless PPL_FULL_STATS=1.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ppl
from inference import mcmc
from inference.diagnostics import mcmc as diag

FULL = os.environ.get("PPL_FULL_STATS") == "1"
N_CHAINS = 1000 if FULL else 128
N_STEPS = 2000 if FULL else 400
BURN = 100

# ----------------------------------------------------------------- reversible jump model
# k = 0: all six data points share one mean mu; k = 1: the first three have mean mu1, the last
# three mu2. Known noise, Gaussian priors: both marginal likelihoods are Gaussian (exact).
TAU, SIGMA, S_U, NA = 1.5, 1.0, 1.0, 3
YS = jnp.array([-1.1, -0.4, -0.9, 0.7, 1.3, 0.6])


@ppl.gen
def one():
    mu = ppl.normal(0.0, TAU) @ "mu"
    return jnp.full(6, mu)


@ppl.gen
def two():
    mu1 = ppl.normal(0.0, TAU) @ "mu1"
    mu2 = ppl.normal(0.0, TAU) @ "mu2"
    return jnp.concatenate([jnp.full(NA, mu1), jnp.full(6 - NA, mu2)])


@ppl.gen
def rj_model():
    k = ppl.flip(0.5) @ "k"
    means = ppl.cond(k == 1, two, one)() @ "means"
    ppl.normal(means, SIGMA) @ "ys"


@ppl.gen
def draw_u(s):
    ppl.normal(0.0, s) @ "u"


@ppl.gen
def nothing(s):
    pass


@ppl.gen
def split_aux(tr, s):
    # split (k = 0) draws u; merge (k = 1) draws nothing
    ppl.cond(tr.choices["k"] == 0, draw_u, nothing)(s) @ "aux"


def split_merge(ch, aux, s):
    """(mu, u) <-> (mu1, mu2) = (mu - u, mu + u); |det J| = 2 (split), 1/2 (merge)."""
    k = ch["k"]
    mu, mu1, mu2 = ch["means", "mu"], ch["means", "mu1"], ch["means", "mu2"]
    u = aux["aux", "u"]
    constraints = ppl.ChoiceMap({"k": 1 - k, ("means", "mu"): (mu1 + mu2) / 2,
                                 ("means", "mu1"): mu - u, ("means", "mu2"): mu + u})
    return constraints, ppl.ChoiceMap({("aux", "u"): (mu2 - mu1) / 2})


RJ = mcmc.involutive(split_aux, split_merge, (S_U,))
WITHIN = mcmc.mh(ppl.select(("means", "mu"), ("means", "mu1"), ("means", "mu2")))
RJ_KERNEL = mcmc.cycle(RJ, mcmc.repeat(WITHIN, 2))


def exact_p_two(ys):
    """P(k = 1 | ys) from the two Gaussian marginal likelihoods (float64)."""
    y = np.asarray(ys, float)
    c0 = SIGMA**2 * np.eye(6) + TAU**2 * np.ones((6, 6))
    c1 = SIGMA**2 * np.eye(6)
    c1[:NA, :NA] += TAU**2
    c1[NA:, NA:] += TAU**2
    l0 = stats.multivariate_normal(np.zeros(6), c0).logpdf(y)
    l1 = stats.multivariate_normal(np.zeros(6), c1).logpdf(y)
    return 1.0 / (1.0 + np.exp(l0 - l1))


def _overall_mean(leaves, k):
    v = {p: (x.value if isinstance(x, ppl.Masked) else x) for p, x in leaves.items()}
    return jnp.where(k == 1, (NA * v["means", "mu1"] + (6 - NA) * v["means", "mu2"]) / 6, v["means", "mu"])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chains(kernel, n, keys, traces):
    """Independent chains of ``n`` steps, vmapped over keys and starting traces (one compiled
    program): the draws (a choice map with leading axes (chains, steps)) and the kernel infos."""

    def one(key, tr):
        ch, info, _ = mcmc.sample(key, kernel, tr, n)
        return ch, info

    return jax.vmap(one)(keys, traces)


def _rj_chains(keys, traces):
    """RJ chains: per step the model index, the overall mean of the data's means, the infos."""
    ch, info = _chains(RJ_KERNEL, N_STEPS, keys, traces)
    leaves = dict(ch.leaves())
    k = leaves[("k",)]
    return np.asarray(k), np.asarray(_overall_mean(leaves, k)), info


def _loglik(tr):
    return float(rj_model.assess(tr.choices)[0])


# ------------------------------------------------------------------------ exact single moves
def test_rj_single_moves_exact_ratio():
    """Split from k = 0 and merge from k = 1: accept_prob is min(1, p(t')/p(t) q(u')/q(u) |det J|)
    computed by hand from the proposed values, and log|det J| is +-log 2."""
    obs = ppl.ChoiceMap({"ys": YS})
    keys = jax.random.split(jax.random.key(0), 64)
    for k0, latents in [(0, {("means", "mu"): 0.1}), (1, {("means", "mu1"): -0.8, ("means", "mu2"): 0.9})]:
        tr, _ = rj_model.generate(jax.random.key(1), obs | ppl.ChoiceMap({"k": k0, **latents}))
        news, info = jax.vmap(lambda kk: RJ(kk, tr))(keys)
        acc = np.asarray(info["accepted"])
        assert 0 < acc.sum() < len(acc)
        np.testing.assert_allclose(np.asarray(info["log_det_jacobian"]), np.log(2.0) * (1 if k0 == 0 else -1),
                                   rtol=1e-6)
        lp_old = _loglik(tr)
        for j in np.flatnonzero(acc)[:5]:
            new = mcmc.base.index_trace(news, j, tr)
            assert int(new.choices["k"]) == 1 - k0
            if k0 == 0:
                u = (float(new.choices["means", "mu2"]) - float(new.choices["means", "mu1"])) / 2
                log_alpha = _loglik(new) - lp_old - stats.norm(0, S_U).logpdf(u) + np.log(2.0)
            else:
                u = (latents["means", "mu2"] - latents["means", "mu1"]) / 2
                log_alpha = _loglik(new) - lp_old + stats.norm(0, S_U).logpdf(u) - np.log(2.0)
            np.testing.assert_allclose(float(info["accept_prob"][j]), min(1.0, np.exp(log_alpha)), rtol=1e-4)


# -------------------------------------------------------------------- scaling move (Gamma)
A0, B0 = 3.0, 2.0
XS = jnp.array([0.3, 1.2, 0.5, 0.9, 0.2])


@ppl.gen
def rate_model():
    rate = ppl.gamma(A0, B0) @ "rate"
    ppl.exponential(rate * jnp.ones(5)) @ "ys"


@ppl.gen
def scale_prop(tr, s):
    ppl.log_normal(0.0, s) @ "s"


def scale_flip(ch, aux, s):
    """(x, s) -> (x s, 1/s): |det J| = |det [[s, x], [0, -1/s^2]]| = 1/s."""
    return ppl.ChoiceMap({"rate": ch["rate"] * aux["s"]}), ppl.ChoiceMap({"s": 1.0 / aux["s"]})


SCALE = mcmc.involutive(scale_prop, scale_flip, (0.6,))


def test_scale_move_single_step_exact():
    tr, _ = rate_model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": XS, "rate": 1.5}))
    news, info = jax.vmap(lambda kk: SCALE(kk, tr))(jax.random.split(jax.random.key(1), 64))
    acc = np.asarray(info["accepted"])
    assert 0 < acc.sum() < len(acc)
    x0 = 1.5
    lp0 = float(rate_model.assess(tr.choices)[0])
    for j in np.flatnonzero(acc)[:8]:
        x1 = float(news.choices["rate"][j])
        s = x1 / x0
        np.testing.assert_allclose(float(info["log_det_jacobian"][j]), -np.log(s), rtol=1e-4, atol=1e-5)
        lp1 = float(rate_model.assess(ppl.ChoiceMap({"ys": XS, "rate": x1}))[0])
        # lognormal(0, sigma): q(1/s) = s^2 q(s), so the ratio is p(x s)/p(x) * s
        np.testing.assert_allclose(float(info["accept_prob"][j]), min(1.0, np.exp(lp1 - lp0) * s), rtol=1e-4)


@pytest.mark.statistical
def test_scale_move_gamma_posterior():
    """Stationary distribution of the scaling move: the conjugate Gamma posterior (mean and second
    moment, z-tests over independent chains' means)."""
    a, b = A0 + 5, B0 + float(jnp.sum(XS))
    trs = mcmc.init_chains(jax.random.key(2), rate_model, (), ppl.ChoiceMap({"ys": XS}), N_CHAINS)
    ch, info = _chains(SCALE, N_STEPS, jax.random.split(jax.random.key(3), N_CHAINS), trs)
    x = np.asarray(ch["rate"], float)[:, BURN:]
    for stat, truth in [(x, a / b), (x**2, a * (a + 1) / b**2)]:
        means = stat.mean(axis=1)
        se = means.std(ddof=1) / np.sqrt(len(means))
        assert abs(means.mean() - truth) < 4 * se, (means.mean(), truth, se)
    assert 0.2 < float(np.mean(info["accept_prob"])) < 0.95
    assert np.all(np.asarray(info["log_det_jacobian"]) != 0.0)


# ------------------------------------------------------------------ reversible jump posterior
@pytest.mark.statistical
def test_rj_model_index_posterior():
    """P(k = 1 | ys) of RJ split/merge + within-model MH matches the exact answer (z-test with
    the means of many independent chains, after burn-in)."""
    truth = exact_p_two(YS)
    trs = mcmc.init_chains(jax.random.key(0), rj_model, (), ppl.ChoiceMap({"ys": YS}), N_CHAINS)
    keys = jax.random.split(jax.random.key(1), N_CHAINS)
    k, _, info = _rj_chains(keys, trs)
    means = np.asarray(k[:, BURN:], float).mean(axis=1)
    se = means.std(ddof=1) / np.sqrt(len(means))
    assert abs(means.mean() - truth) < 4 * se, (means.mean(), truth, se)
    rj_info = info[0]
    rate = float(np.mean(rj_info["accept_prob"]))
    assert 0.1 < rate < 0.9
    # every step switched models (a split or a merge): log|det J| = +-log 2
    np.testing.assert_allclose(np.abs(np.asarray(rj_info["log_det_jacobian"])), np.log(2.0), rtol=1e-6)


@pytest.mark.statistical
def test_rj_sbc():
    """Simulation-based calibration of the RJ sampler: ranks of the true model index (ties broken
    at random) and of the true overall mean among thinned posterior draws are uniform."""
    n_rep, n_draws = N_CHAINS, 19
    truth_tr = jax.vmap(lambda kk: rj_model.simulate(kk))(jax.random.split(jax.random.key(4), n_rep))
    ys = truth_tr.choices["ys"]
    # chains start from an independent prior draw of the latents, given the simulated data
    starts = jax.vmap(lambda kk, y: rj_model.generate(kk, ppl.ChoiceMap({"ys": y}))[0])(
        jax.random.split(jax.random.key(5), n_rep), ys)
    k, mean, _ = _rj_chains(jax.random.split(jax.random.key(6), n_rep), starts)
    thin = (N_STEPS - BURN) // n_draws
    idx = BURN + thin * np.arange(1, n_draws + 1) - 1
    leaves = dict(truth_tr.choices.leaves())
    k_true = np.asarray(leaves[("k",)])
    mean_true = np.asarray(_overall_mean(leaves, leaves[("k",)]))
    for name, true, draws in [("k", k_true, np.asarray(k)[:, idx]), ("mean", mean_true, np.asarray(mean)[:, idx])]:
        ranks = diag.sbc_ranks(true, draws, key=7)
        _, p = diag.rank_uniformity(ranks, n_draws + 1, 5 if not FULL else 20)
        assert p > 1e-3, (name, p, np.bincount(ranks, minlength=n_draws + 1))


# ---------------------------------------------------------------------------------- errors
@ppl.gen
def normal_model():
    x = ppl.normal(0.0, 1.0) @ "x"
    ppl.normal(x, 0.5) @ "y"


@ppl.gen
def shift_prop(tr):
    ppl.normal(0.0, 1.0) @ "u"


def test_not_an_involution_raises_in_debug_mode():
    def not_involution(ch, aux):  # (x, u) -> (x + u, u): applying it twice adds 2u
        return ppl.ChoiceMap({"x": ch["x"] + aux["u"]}), ppl.ChoiceMap({"u": aux["u"]})

    tr, _ = normal_model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 0.3}))
    kernel = mcmc.involutive(shift_prop, not_involution)
    with pytest.raises(ppl.ModelError, match="not an involution.*'x'"):
        with ppl.debug():
            jax.block_until_ready(kernel(jax.random.key(1), tr))

    def involution(ch, aux):  # (x, u) -> (x + u, -u)
        return ppl.ChoiceMap({"x": ch["x"] + aux["u"]}), ppl.ChoiceMap({"u": -aux["u"]})

    # a true involution passes the check, also the RJ move in both directions (split and merge)
    with ppl.debug():
        jax.block_until_ready(mcmc.involutive(shift_prop, involution)(jax.random.key(1), tr))
        rj = mcmc.involutive(split_aux, split_merge, (S_U,))
        for k0 in (0, 1):
            t0, _ = rj_model.generate(jax.random.key(k0), ppl.ChoiceMap({"ys": YS, "k": k0}))
            jax.block_until_ready(rj(jax.random.key(2), t0))


def test_fresh_prior_choice_raises():
    def half_split(ch, aux, s):  # the split leaves mu2 to be drawn from the prior
        k, mu, u = ch["k"], ch["means", "mu"], aux["aux", "u"]
        return (ppl.ChoiceMap({"k": 1 - k, ("means", "mu"): ch["means", "mu1"], ("means", "mu1"): mu - u}),
                ppl.ChoiceMap({("aux", "u"): ch["means", "mu1"]}))

    tr, _ = rj_model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS, "k": 0}))
    kernel = mcmc.involutive(split_aux, half_split, (S_U,))
    with pytest.raises(ppl.ModelError, match="creates the choice at 'means' / 'mu2'"):
        with ppl.debug():
            jax.block_until_ready(kernel(jax.random.key(1), tr))
    with pytest.raises(Exception, match="creates the choice at 'means' / 'mu2'"):  # also outside debug mode
        jax.block_until_ready(mcmc.involutive(split_aux, half_split, (2.0,))(jax.random.key(1), tr))


def test_missing_reverse_aux_raises():
    def no_aux(ch, aux):
        return ppl.ChoiceMap({"x": ch["x"] + aux["u"]}), ppl.ChoiceMap({})

    tr, _ = normal_model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 0.3}))
    with pytest.raises(ppl.ModelError, match="auxiliary choice at 'u'"):
        mcmc.involutive(shift_prop, no_aux)(jax.random.key(1), tr)
    with pytest.raises(TypeError, match="generative function"):
        mcmc.involutive(no_aux, no_aux)


def test_dimension_change_raises():
    """A proposal that draws u in both directions: a split maps (mu, u) to (mu1, mu2, u'), three
    coordinates from two, which no involution can do."""

    @ppl.gen
    def always_u(tr, s):
        draw_u(s) @ "aux"

    tr, _ = rj_model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS, "k": 0}))
    with pytest.raises(ppl.ModelError, match="maps 2 continuous coordinates .* to 3"):
        with ppl.debug():
            jax.block_until_ready(mcmc.involutive(always_u, split_merge, (S_U,))(jax.random.key(1), tr))
