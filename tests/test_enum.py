"""inference.enum: exact enumeration of discrete sites (plates, scans), against brute force."""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp
from scipy.stats import norm as sp_norm

import ppl
from inference.enum import infer_discrete, marginalize

FULL = os.environ.get("PPL_FULL_STATS") == "1"
N, K = 4, 3
MEANS = jnp.array([-2.0, 0.5, 3.0])
W = jnp.array([0.2, 0.5, 0.3])
Y = jnp.array([0.1, -1.7, 2.6, 0.9])
TRANS = jnp.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.25, 0.25, 0.5]])


@ppl.gen
def datum(shift):
    z = ppl.categorical(probs=W) @ "z"
    return ppl.normal(MEANS[z] + shift, 1.0) @ "y"


@ppl.gen
def plate_model():
    shift = ppl.normal(0.0, 1.0) @ "shift"
    ys = datum.repeat(N)(shift) @ "data"
    ppl.normal(shift, 2.0) @ "after"
    return ys


@ppl.gen
def hmm_step(prev, _):
    z = ppl.categorical(probs=TRANS[prev]) @ "z"
    ppl.normal(MEANS[z], 1.0) @ "y"
    return z, None


@ppl.gen
def hmm_model():
    ppl.scan(hmm_step, length=N)(jnp.int32(0), None) @ "hmm"
    return 0


def _plate_choices(shift=0.3):
    return ppl.ChoiceMap({"shift": shift, ("data", "y"): Y, "after": 0.4})


def test_plate_assess_equals_brute_force():
    marg = marginalize(plate_model, ("data", "z"))
    chm = _plate_choices()
    lp, _ = marg.assess(chm)
    terms = [plate_model.assess(chm.set(("data", "z"), jnp.array(zs, dtype=jnp.int32)))[0]
             for zs in itertools.product(range(K), repeat=N)]
    assert len(terms) == K**N
    np.testing.assert_allclose(lp, logsumexp(jnp.array(terms)), rtol=1e-5)


def test_plate_generate_update_regenerate_weights():
    marg = marginalize(plate_model, ("data", "z"))
    obs = ppl.ChoiceMap({("data", "y"): Y, "after": 0.4})
    tr, w = marg.generate(jax.random.key(1), obs)
    shift = tr.choices["shift"]
    lp, _ = marg.assess(tr.choices)
    np.testing.assert_allclose(tr.score, lp, rtol=1e-5)
    # the only fresh choice is "shift", proposed from its prior
    np.testing.assert_allclose(w, lp - sp_norm.logpdf(float(shift), 0.0, 1.0), rtol=1e-4)
    assert ("data", "z") not in [p for p, _ in tr.choices.leaves()]
    tr2, w2, discard = marg.update(jax.random.key(2), tr, ppl.ChoiceMap({"shift": 1.1}))
    lp2, _ = marg.assess(tr2.choices)
    np.testing.assert_allclose(w2, lp2 - lp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(discard["shift"], shift)
    # the per-site scores add up to the marginal density
    np.testing.assert_allclose(tr2.project(ppl.select_all()), tr2.score, rtol=1e-5)
    # regenerate with the prior proposal of "shift": MH ratio p(new) q(old) / (p(old) q(new))
    tr3, w3, _ = marg.regenerate(jax.random.key(3), tr2, ppl.select("shift"))
    s_old, s_new = float(tr2.choices["shift"]), float(tr3.choices["shift"])
    expect = (tr3.score - tr2.score) + sp_norm.logpdf(s_old, 0, 1) - sp_norm.logpdf(s_new, 0, 1)
    np.testing.assert_allclose(w3, expect, rtol=1e-4, atol=1e-4)


def test_simulate_score_is_marginal():
    marg = marginalize(plate_model, ("data", "z"))
    tr = marg.simulate(jax.random.key(4))
    lp, _ = marg.assess(tr.choices)
    np.testing.assert_allclose(tr.score, lp, rtol=1e-5)


def _hmm_choices():
    return ppl.ChoiceMap({("hmm", "y"): Y})


def _numpy_forward(y):
    t, m = np.asarray(TRANS, np.float64), np.asarray(MEANS, np.float64)
    alpha = t[0] * sp_norm.pdf(y[0], m, 1.0)
    for yt in y[1:]:
        alpha = (alpha @ t) * sp_norm.pdf(yt, m, 1.0)
    return np.log(alpha.sum())


def test_scan_assess_equals_brute_force_and_forward():
    marg = marginalize(hmm_model, ("hmm", "z"))
    chm = _hmm_choices()
    lp, _ = marg.assess(chm)
    terms = [hmm_model.assess(chm.set(("hmm", "z"), jnp.array(zs, dtype=jnp.int32)))[0]
             for zs in itertools.product(range(K), repeat=N)]
    np.testing.assert_allclose(lp, logsumexp(jnp.array(terms)), rtol=1e-5)
    np.testing.assert_allclose(lp, _numpy_forward(np.asarray(Y)), rtol=1e-5)
    tr, w = marg.generate(jax.random.key(0), chm)
    np.testing.assert_allclose(w, lp, rtol=1e-5)  # nothing fresh: the weight is the marginal
    # per-step scores are the forward algorithm's increments log p(y_t | y_<t)
    inc = tr.get_scores()["hmm", "y"]
    np.testing.assert_allclose(inc[0], _numpy_forward(np.asarray(Y[:1])), rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(inc), lp, rtol=1e-5)


def test_global_site_and_refusals():
    @ppl.gen
    def m():
        z = ppl.bernoulli(probs=0.3) @ "z"
        return ppl.normal(jnp.where(z == 1, 1.0, -1.0), 1.0) @ "y"

    lp, _ = marginalize(m, "z").assess({"y": 0.2})
    exact = np.log(0.3 * sp_norm.pdf(0.2, 1, 1) + 0.7 * sp_norm.pdf(0.2, -1, 1))
    np.testing.assert_allclose(lp, exact, rtol=1e-5)
    with pytest.raises(ppl.ModelError, match="'y'.*no finite support"):
        marginalize(m, "y").assess({"z": 1})
    with pytest.raises(ppl.ModelError, match="no distribution site at 'zz'"):
        marginalize(m, "zz").assess({"y": 0.2, "z": 1})
    with pytest.raises(ppl.ModelError, match="enumerated site"):
        marginalize(m, "z").assess({"y": 0.2, "z": 1})

    @ppl.gen
    def poisson_site():
        return ppl.poisson(3.0) @ "n"

    with pytest.raises(ppl.ModelError, match="'n'"):
        marginalize(poisson_site, "n").simulate(jax.random.key(0))

    @ppl.gen
    def big():
        ppl.categorical(logits=jnp.zeros(70)) @ "a"
        ppl.categorical(logits=jnp.zeros(70)) @ "b"
        return ppl.normal(0.0, 1.0) @ "y"

    with pytest.raises(ppl.ModelError, match="sites 'a', 'b' outside any plate have more than 4096 joint values"):
        marginalize(big, "a", "b").assess({"y": 0.0})


def test_dependence_outside_plate_is_nan_and_debug_error():
    @ppl.gen
    def leaky():
        zs = ppl.bernoulli.repeat(3)(0.5) @ "zs"
        return ppl.normal(jnp.sum(zs).astype(jnp.float32), 1.0) @ "total"

    marg = marginalize(leaky, "zs")
    lp, _ = marg.assess({"total": 1.0})
    assert np.isnan(lp)
    with ppl.debug():
        with pytest.raises(ppl.ModelError, match="depends on an enumerated"):
            jax.block_until_ready(marg.assess({"total": 1.0})[0])


def test_infer_discrete_plate_probs_exact():
    marg = marginalize(plate_model, ("data", "z"))
    chm = _plate_choices()
    post = infer_discrete(jax.random.key(0), marg, chm, probs=True)[("data", "z")]
    lik = sp_norm.pdf(np.asarray(Y)[:, None], np.asarray(MEANS)[None] + 0.3, 1.0) * np.asarray(W)[None]
    np.testing.assert_allclose(post, lik / lik.sum(1, keepdims=True), rtol=1e-4)


def _numpy_smoothing(y):
    t, m = np.asarray(TRANS, np.float64), np.asarray(MEANS, np.float64)
    T = len(y)
    lik = sp_norm.pdf(np.asarray(y)[:, None], m[None], 1.0)
    alpha = np.zeros((T, K))
    beta = np.ones((T, K))
    alpha[0] = t[0] * lik[0]
    for i in range(1, T):
        alpha[i] = (alpha[i - 1] @ t) * lik[i]
    for i in range(T - 2, -1, -1):
        beta[i] = t @ (lik[i + 1] * beta[i + 1])
    p = alpha * beta
    return p / p.sum(1, keepdims=True)


def test_hmm_ffbs_matches_smoothing_marginals():
    marg = marginalize(hmm_model, ("hmm", "z"))
    chm = _hmm_choices()
    exact = _numpy_smoothing(np.asarray(Y))
    probs = infer_discrete(jax.random.key(0), marg, chm, probs=True)[("hmm", "z")]
    np.testing.assert_allclose(probs, exact, rtol=1e-4, atol=1e-6)
    R = 2000
    draws = jax.vmap(lambda k: infer_discrete(k, marg, chm)[("hmm", "z")])(jax.random.split(jax.random.key(5), R))
    freq = np.stack([(np.asarray(draws) == k).mean(0) for k in range(K)], axis=1)
    se = np.sqrt(exact * (1 - exact) / R)
    assert np.all(np.abs(freq - exact) < 4 * se + 1e-9)
    # joint check: pair frequencies of (z_0, z_1) against the exact pairwise posterior
    y, t, m = np.asarray(Y), np.asarray(TRANS), np.asarray(MEANS)
    lik = sp_norm.pdf(y[:, None], m[None], 1.0)
    beta1 = np.ones(K)
    for i in range(N - 1, 1, -1):
        beta1 = t @ (lik[i] * beta1)
    pair = (t[0] * lik[0])[:, None] * t * (lik[1] * beta1)[None]
    pair /= pair.sum()
    fpair = np.array([[np.mean((draws[:, 0] == a) & (draws[:, 1] == b)) for b in range(K)] for a in range(K)])
    assert np.all(np.abs(fpair - pair) < 4 * np.sqrt(pair * (1 - pair) / R) + 1e-9)


# ----------------------------------------------------------------------------- Gaussian mixture
MIX_W = np.array([0.3, 0.7])
MIX_SD, PRIOR_SD = 1.0, 10.0
N_MIX = 1000 if FULL else 200


def _mixture_data(n):
    rng = np.random.default_rng(0)
    comp = rng.random(n) < MIX_W[1]
    return np.where(comp, rng.normal(2.0, MIX_SD, n), rng.normal(-1.0, MIX_SD, n)).astype(np.float32)


@ppl.gen
def mix_point(mu):
    z = ppl.categorical(probs=jnp.asarray(MIX_W, jnp.float32)) @ "z"
    return ppl.normal(mu[z], MIX_SD) @ "y"


def _mixture(n):
    @ppl.gen
    def mixture(params):
        mu = ppl.normal(jnp.zeros(2), PRIOR_SD) @ "mu"
        return mix_point.repeat(n)(mu) @ "data"

    return mixture


def _log_post_grid(y, g1, g2):
    """log p(mu, y) on the grid g1 x g2 (numpy, float64)."""
    y = np.asarray(y, np.float64)
    l1 = np.log(MIX_W[0]) + sp_norm.logpdf(y[None], g1[:, None], MIX_SD)  # (G1, n)
    l2 = np.log(MIX_W[1]) + sp_norm.logpdf(y[None], g2[:, None], MIX_SD)  # (G2, n)
    out = np.empty((len(g1), len(g2)))
    for i in range(len(g1)):
        out[i] = np.logaddexp(l1[i][None], l2).sum(1)
    return out + sp_norm.logpdf(g1, 0, PRIOR_SD)[:, None] + sp_norm.logpdf(g2, 0, PRIOR_SD)[None]


@pytest.mark.statistical
def test_nuts_on_marginal_mixture_matches_grid_posterior():
    """NUTS (mcmc.run) on the mixture with the labels summed out; posterior means of the two
    component means against a 2-D grid quadrature of the exact marginal posterior, within 4 MCSE.
    200 points by default (1000 with PPL_FULL_STATS=1)."""
    from inference import mcmc
    from inference.diagnostics.mcmc import mcse

    y = _mixture_data(N_MIX)
    model = marginalize(_mixture(N_MIX), ("data", "z"))
    obs = ppl.ChoiceMap({("data", "y"): jnp.asarray(y)})
    tr, _ = model.generate(jax.random.key(0), obs.set("mu", jnp.array([-1.0, 2.0])), {})
    res = mcmc.run(jax.random.key(1), mcmc.nuts(ppl.select("mu")), tr, 1000 if FULL else 300,
                   n_chains=2, burn_in=1000 if FULL else 200)
    draws = np.asarray(res.choices["mu"])  # (chains, draws, 2)
    # grid: +-6 posterior sds around the draws' mean
    m, s = draws.reshape(-1, 2).mean(0), draws.reshape(-1, 2).std(0)
    g1, g2 = (np.linspace(m[i] - 6 * s[i], m[i] + 6 * s[i], 301) for i in range(2))
    lp = _log_post_grid(y, g1, g2)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    exact = np.array([(p.sum(1) * g1).sum(), (p.sum(0) * g2).sum()])
    err = np.array([mcse(draws[..., i]) for i in range(2)])
    assert np.all(np.abs(draws.mean((0, 1)) - exact) < 4 * err), (draws.mean((0, 1)), exact, err)


def _em_map(y, iters=500):
    """EM for the MAP of the two means (known weights and scale, N(0, PRIOR_SD^2) prior)."""
    y = np.asarray(y, np.float64)
    mu = np.array([-0.5, 0.5])
    for _ in range(iters):
        logr = np.log(MIX_W)[None] + sp_norm.logpdf(y[:, None], mu[None], MIX_SD)
        r = np.exp(logr - np.logaddexp.reduce(logr, axis=1, keepdims=True))
        mu = (r * y[:, None]).sum(0) / MIX_SD**2 / (r.sum(0) / MIX_SD**2 + 1.0 / PRIOR_SD**2)
    return mu


def test_elbo_with_delta_guide_on_marginal_mixture_matches_em():
    """vi.elbo with vi.AutoDelta over the remaining latent (the means) of the marginalized mixture
    is MAP estimation of the marginal density: it must agree with EM's MAP (computed in numpy)."""
    import optax

    from inference import vi

    n = 200
    y = _mixture_data(n)
    model = marginalize(_mixture(n), ("data", "z"))
    obs = ppl.ChoiceMap({("data", "y"): jnp.asarray(y)})
    guide = vi.AutoDelta(model, obs)
    p0 = guide.init_params(jax.random.key(0), init_values={"mu": jnp.array([-0.5, 0.5])})
    steps = 1500
    res = vi.fit(jax.random.key(1), vi.elbo(model, guide), p0,
                 optax.adam(optax.exponential_decay(0.05, steps, 0.02)), steps, obs, progress=False)
    got = np.asarray(guide.median(res.params)["mu"])
    np.testing.assert_allclose(got, _em_map(y), atol=2e-3)


def test_unconstrained_view_of_positive_site_through_marginal():
    """HMC's unconstrained coordinates pass through the marginal model: writing u at a positive
    site stores exp(u) and scores the marginal density plus the log-Jacobian u; reading gives u."""
    from inference.mcmc.transforms import UnconstrainedView

    @ppl.gen
    def m():
        s = ppl.gamma(2.0, 1.0) @ "s"
        return datum.repeat(N)(s) @ "data"

    marg = marginalize(m, ("data", "z"))
    tr, _ = marg.generate(jax.random.key(0), ppl.ChoiceMap({("data", "y"): Y, "s": 0.7}))
    view = UnconstrainedView(marg, [("s",)])
    np.testing.assert_allclose(jax.jit(view.read)(tr)[("s",)], np.log(0.7), rtol=1e-5)
    new, lp = jax.jit(view.write)(tr, {("s",): jnp.asarray(0.2)})
    np.testing.assert_allclose(new.choices["s"], np.exp(0.2), rtol=1e-5)
    exact, _ = marg.assess(ppl.ChoiceMap({("data", "y"): Y, "s": float(np.exp(0.2))}))
    np.testing.assert_allclose(lp, exact + 0.2, rtol=1e-5)


def test_importance_sampling_evidence_of_marginal_model():
    """inference.importance on the marginal model (the labels summed out, the shift sampled from
    its prior): the evidence estimate against 1-D quadrature over the shift, within 4 standard
    errors of the estimate (from the weights' spread)."""
    from inference import importance

    obs = ppl.ChoiceMap({("data", "y"): Y, "after": 0.4})
    n = 20000
    ps = importance.sample(jax.random.key(7), marginalize(plate_model, ("data", "z")), (), obs, n)
    lw = np.asarray(ps.log_weights, np.float64)
    w = np.exp(lw - lw.max())
    log_z = np.log(w.mean()) + lw.max()
    se = w.std() / np.sqrt(n) / w.mean()  # relative standard error of the estimate
    s = np.linspace(-8, 8, 20001)
    y, m, wt = np.asarray(Y, np.float64), np.asarray(MEANS, np.float64), np.asarray(W, np.float64)
    lik = np.log((wt[None, None] * sp_norm.pdf(y[None, :, None], m[None, None] + s[:, None, None], 1.0)).sum(2)).sum(1)
    integrand = np.exp(sp_norm.logpdf(s, 0, 1) + sp_norm.logpdf(0.4, s, 2.0) + lik)
    exact = np.log(integrand.sum() * (s[1] - s[0]))
    np.testing.assert_allclose(float(ps.log_marginal_likelihood()), log_z, rtol=1e-5)
    assert abs(np.exp(log_z - exact) - 1.0) < 4 * se, (log_z, exact, se)


def test_scan_carry_with_history_is_detected_and_two_plates_refused():
    @ppl.gen
    def counting(count, _):  # the carry counts the visits to state 1: more than the current state
        z = ppl.bernoulli(jnp.where(count > 1, 0.9, 0.2)) @ "z"
        ppl.normal(z.astype(jnp.float32), 1.0) @ "y"
        return count + z, None

    marg = marginalize(ppl.scan(counting, length=5), "z")
    lp, _ = marg.assess({"y": jnp.zeros(5)}, jnp.int32(0), None)
    assert np.isnan(lp)

    @ppl.gen
    def two():
        a = datum.repeat(2)(0.0) @ "a"
        b = datum.repeat(2)(0.0) @ "b"
        return a, b

    with pytest.raises(ppl.ModelError, match="different plates"):
        marginalize(two, ("a", "z"), ("b", "z")).assess({("a", "y"): Y[:2], ("b", "y"): Y[:2]})


def test_mh_chains_on_marginal_model_with_array_argument():
    """mcmc.run (2 chains of MH on "shift", i.e. regenerate) on a marginal model whose argument is
    an array shared by the chains: the chains' traces batch and the draws match the exact posterior
    mean of the shift (1-D quadrature) within 4 MCSE."""
    from inference import mcmc
    from inference.diagnostics.mcmc import mcse

    @ppl.gen
    def one(means, s):
        z = ppl.categorical(probs=W) @ "z"
        return ppl.normal(means[z] + s, 1.0) @ "y"

    @ppl.gen
    def m(means):
        shift = ppl.normal(0.0, 1.0) @ "shift"
        return one.repeat(N)(means, shift) @ "data"

    marg = marginalize(m, ("data", "z"))
    tr, _ = marg.generate(jax.random.key(0), ppl.ChoiceMap({("data", "y"): Y}), MEANS)
    res = mcmc.run(jax.random.key(1), mcmc.mh(ppl.select("shift")), tr, 2000, n_chains=2, burn_in=200)
    draws = np.asarray(res.choices["shift"])
    assert draws.shape == (2, 2000)
    s = np.linspace(-6, 6, 4001)
    y, mm, wt = np.asarray(Y, np.float64), np.asarray(MEANS, np.float64), np.asarray(W, np.float64)
    lik = np.log((wt * sp_norm.pdf(y[None, :, None], mm + s[:, None, None], 1.0)).sum(2)).sum(1)
    p = np.exp(sp_norm.logpdf(s, 0, 1) + lik - lik.max())
    exact = (p * s).sum() / p.sum()
    assert abs(draws.mean() - exact) < 4 * mcse(draws), (draws.mean(), exact)
