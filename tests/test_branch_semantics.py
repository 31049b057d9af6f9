"""Gen's update/regenerate semantics at branch switches, checked against exact answers.

- weights of ``update``/``regenerate`` against ``log p(t') - log p(t) - log q(...)`` computed by
  ``assess`` (every combination of old and new branch, under jit and vmap);
- MCMC on branch flags (Gibbs, MH with the prior, MH with a custom proposal that switches
  branches) against exact enumeration / integration;
- a GenJAX-style curve fit with outliers (``ppl.cond`` inside ``ppl.vmap``) against the exact
  posterior obtained by enumerating all outlier configurations (conjugate Gaussian regression).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ppl
from inference import mcmc
from ppl import ChoiceMap, gen, select


# ----------------------------------------------------------------------------- models
@gen
def branch_a():
    x = ppl.normal(0.0, 1.0) @ "x"
    ppl.normal(x, 1.0) @ "a"
    return x


@gen
def branch_b():
    x = ppl.normal(2.0, 1.0) @ "x"
    ppl.normal(0.0, 2.0) @ "b"
    return x


@gen
def two_branch():
    c = ppl.flip(0.3) @ "c"
    return ppl.cond(c, branch_b, branch_a)() @ "br"


def lp_norm(x, m, s):
    return float(stats.norm.logpdf(x, m, s))


def joint(c, x, other):
    """log p of two_branch's trace with flag c, shared x and branch-own value ``other``."""
    if c:
        return np.log(0.3) + lp_norm(x, 2.0, 1.0) + lp_norm(other, 0.0, 2.0)
    return np.log(0.7) + lp_norm(x, 0.0, 1.0) + lp_norm(other, x, 1.0)


def _trace(c, x, other):
    own = ("br", "b") if c else ("br", "a")
    tr, _ = two_branch.generate(jax.random.key(0), ChoiceMap({"c": c, ("br", "x"): x, own: other}))
    return tr


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("c_old,c_new", list(itertools.product([0, 1], [0, 1])))
def test_update_weight_is_gen_definition(c_old, c_new):
    x, other = 0.7, -0.4
    tr = _trace(c_old, x, other)
    new, w, discard = two_branch.update(jax.random.key(3), tr, ChoiceMap({"c": c_new}))
    ch = new.choices
    # the shared address keeps its value across the switch
    assert float(ch["br", "x"]) == pytest.approx(x)
    own_new = ("br", "b") if c_new else ("br", "a")
    v_new = float(ch[own_new])
    lp_new = joint(c_new, x, v_new)
    assert float(new.score) == pytest.approx(lp_new, abs=1e-4)
    expected = lp_new - joint(c_old, x, other)
    if c_new != c_old:  # the new branch's own choice is fresh, from its prior
        fresh_lp = lp_norm(v_new, 0.0, 2.0) if c_new else lp_norm(v_new, x, 1.0)
        expected -= fresh_lp
        own_old = ("br", "b") if c_old else ("br", "a")
        assert float(discard[own_old]) == pytest.approx(other)
        assert ("br", "x") not in discard
    else:
        assert float(ch[own_new]) == pytest.approx(other)
    assert float(discard["c"]) == c_old
    assert float(w) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("c_old,c_new", [(0, 1), (1, 0)])
def test_update_with_full_constraints_is_density_ratio(c_old, c_new):
    tr = _trace(c_old, 0.7, -0.4)
    own_new = ("br", "b") if c_new else ("br", "a")
    cons = ChoiceMap({"c": c_new, ("br", "x"): 1.5, own_new: 0.25})
    new, w, discard = jax.jit(lambda t: two_branch.update(jax.random.key(1), t, cons))(tr)
    expected = joint(c_new, 1.5, 0.25) - joint(c_old, 0.7, -0.4)
    assert float(w) == pytest.approx(expected, abs=1e-4)
    assert float(discard["br", "x"]) == pytest.approx(0.7)  # overwritten value is discarded


def test_regenerate_weight_is_mh_ratio_of_prior_proposal():
    x, other = 0.7, -0.4
    seen = set()
    for seed in range(12):
        tr = _trace(0, x, other)
        new, w, _ = two_branch.regenerate(jax.random.key(seed), tr, select("c"))
        c_new = int(new.choices["c"])
        seen.add(c_new)
        assert float(new.choices["br", "x"]) == pytest.approx(x)  # not selected: kept
        # selected and removed/fresh choices cancel against the prior proposal: only x's
        # density changes
        expected = 0.0 if c_new == 0 else lp_norm(x, 2.0, 1.0) - lp_norm(x, 0.0, 1.0)
        assert float(w) == pytest.approx(expected, abs=1e-4)
    assert seen == {0, 1}


def test_regenerate_selected_shared_address_is_resampled():
    tr = _trace(0, 0.7, -0.4)
    for seed in range(6):
        new, w, _ = two_branch.regenerate(jax.random.key(seed), tr, select("c", ("br", "x")))
        if int(new.choices["c"]) == 1:
            assert float(new.choices["br", "x"]) != pytest.approx(0.7)
            assert float(w) == pytest.approx(0.0, abs=1e-5)


def test_update_removed_choice_enters_weight_in_gen_fn():
    @gen
    def chain(n):
        total = 0.0
        for i in range(n):
            total = total + ppl.normal(0.0, 1.0) @ f"x{i}"
        return total

    tr, _ = chain.generate(jax.random.key(0), ChoiceMap({"x0": 0.1, "x1": 0.2, "x2": 1.5}), 3)
    new, w, discard = chain.update(jax.random.key(1), tr, ChoiceMap({}), 2)
    assert float(w) == pytest.approx(-lp_norm(1.5, 0.0, 1.0), abs=1e-5)
    assert float(discard["x2"]) == pytest.approx(1.5)


def test_switch_update_under_vmap_matches_per_copy():
    trs = jax.vmap(lambda c: _trace_traced(c))(jnp.array([0, 1, 0, 1]))
    flips = jnp.array([1, 1, 0, 0])
    news, ws, _ = jax.vmap(lambda t, c: two_branch.update(jax.random.key(2), t, ChoiceMap({"c": c})))(trs, flips)
    for i in range(4):
        t_i = _trace(int([0, 1, 0, 1][i]), 0.7, -0.4)
        n_i, w_i, _ = two_branch.update(jax.random.key(2), t_i, ChoiceMap({"c": int(flips[i])}))
        assert float(ws[i]) == pytest.approx(float(w_i), abs=1e-4)
        assert float(news.score[i]) == pytest.approx(float(n_i.score), abs=1e-4)


def _trace_traced(c):
    cons = ChoiceMap({"c": c, ("br", "x"): 0.7, ("br", "a"): ppl.Masked(-0.4, c == 0),
                      ("br", "b"): ppl.Masked(-0.4, c == 1)})
    return two_branch.generate(jax.random.key(0), cons)[0]


def test_mix_update_carries_shared_choice():
    @gen
    def near():
        return ppl.normal(0.0, 1.0) @ "x"

    @gen
    def far():
        return ppl.normal(0.0, 10.0) @ "x"

    logits = jnp.log(jnp.array([0.8, 0.2]))

    @gen
    def model():
        return ppl.mix(logits, near, far)() @ "m"

    tr, _ = model.generate(jax.random.key(0), ChoiceMap({("m", "component"): 0, ("m", "x"): 3.0}))
    new, w, discard = model.update(jax.random.key(1), tr, ChoiceMap({("m", "component"): 1}))
    assert float(new.choices["m", "x"]) == 3.0
    expected = (np.log(0.2) + lp_norm(3.0, 0, 10)) - (np.log(0.8) + lp_norm(3.0, 0, 1))
    assert float(w) == pytest.approx(expected, abs=1e-4)
    assert ("m", "x") not in discard


# ----------------------------------------------------------------------------- MCMC vs exact
@gen
def near(mu):
    return ppl.normal(mu, 0.1) @ "x"


@gen
def far(mu):
    return ppl.normal(mu, 10.0) @ "x"


@gen
def outlier_model(mu):  # exactly as in docs/modeling.md
    is_outlier = ppl.flip(0.1) @ "outlier"
    return ppl.cond(is_outlier, far, near)(mu) @ "obs"


def _chains(kernel, trace, key, n_chains, n_steps, addrs):
    """Run ``n_chains`` independent chains with ``lax.scan``; record ``addrs`` every step."""

    def chain(k):
        def body(tr, kk):
            tr, _ = kernel(kk, tr)
            return tr, tuple(tr.choices[a] for a in addrs)

        _, out = jax.lax.scan(body, trace, jax.random.split(k, n_steps))
        return out

    return jax.jit(jax.vmap(chain))(jax.random.split(key, n_chains))


def _p_outlier(x, mu, s_near=0.1, s_far=10.0, prior=0.1):
    lo = np.log(prior) + lp_norm(x, mu, s_far)
    li = np.log(1 - prior) + lp_norm(x, mu, s_near)
    return float(np.exp(lo - np.logaddexp(lo, li)))


def _chain_mean_z(samples, exact):
    """z statistic of the mean over chains (batch means: one mean per independent chain)."""
    m = np.asarray(samples, dtype=np.float64).mean(axis=1)
    se = m.std(ddof=1) / np.sqrt(len(m))
    return (m.mean() - exact) / max(se, 1e-3 / np.sqrt(len(m)))


@pytest.mark.parametrize("kernel_name", ["gibbs", "mh_prior"])
def test_outlier_flag_posterior_from_docs_model(kernel_name):
    # The case: x = 5 observed, mu = 1: the exact posterior is outlier with prob. ~1.
    tr, _ = outlier_model.generate(jax.random.key(0), ChoiceMap({("obs", "x"): 5.0, "outlier": 0}), 1.0)
    kernel = mcmc.gibbs("outlier") if kernel_name == "gibbs" else mcmc.mh(select("outlier"))
    flags, xs = _chains(kernel, tr, jax.random.key(1), 8, 200, ["outlier", ("obs", "x")])
    assert np.all(np.asarray(xs) == 5.0), "the observation must never change"
    assert _p_outlier(5.0, 1.0) > 0.999
    assert np.asarray(flags)[:, 20:].mean() > 0.99


@pytest.mark.parametrize("kernel_name", ["gibbs", "mh_prior"])
def test_outlier_flag_posterior_moderate(kernel_name):
    # x within reach of both branches: a posterior strictly between 0 and 1.
    mu, x = 0.0, 0.36
    exact = _p_outlier(x, mu)
    assert 0.2 < exact < 0.8
    tr, _ = outlier_model.generate(jax.random.key(0), ChoiceMap({("obs", "x"): x, "outlier": 0}), mu)
    kernel = mcmc.gibbs("outlier") if kernel_name == "gibbs" else mcmc.mh(select("outlier"))
    flags, xs = _chains(kernel, tr, jax.random.key(2), 32, 300, ["outlier", ("obs", "x")])
    assert np.all(np.asarray(xs) == np.float32(x))
    z = _chain_mean_z(np.asarray(flags)[:, 50:], exact)
    assert abs(z) < 4.0, (np.asarray(flags).mean(), exact, z)


def test_gibbs_on_mix_component_matches_exact():
    logits = jnp.log(jnp.array([0.6, 0.4]))

    @gen
    def model():
        return ppl.mix(logits, near, far)(0.0) @ "m"

    x = 0.3
    lo = np.log(0.4) + lp_norm(x, 0.0, 10.0)
    li = np.log(0.6) + lp_norm(x, 0.0, 0.1)
    exact = float(np.exp(lo - np.logaddexp(lo, li)))
    tr, _ = model.generate(jax.random.key(0), ChoiceMap({("m", "x"): x, ("m", "component"): 0}))
    comps, xs = _chains(mcmc.gibbs(("m", "component")), tr, jax.random.key(3), 32, 200,
                        [("m", "component"), ("m", "x")])
    assert np.all(np.asarray(xs) == np.float32(x))
    # Gibbs on the only latent draws exactly from the conditional: i.i.d. after one step
    z = _chain_mean_z(np.asarray(comps)[:, 1:], exact)
    assert abs(z) < 4.0


# model with branch-specific latents: MH proposals that switch branches
@gen
def left():
    a = ppl.normal(0.0, 1.0) @ "a"
    ppl.normal(a, 1.0) @ "x"


@gen
def right():
    b = ppl.normal(3.0, 1.0) @ "b"
    ppl.normal(b, 0.5) @ "x"


@gen
def switching():
    c = ppl.flip(0.5) @ "c"
    ppl.cond(c, right, left)() @ "br"


def _exact_switching(x):
    l1 = np.log(0.5) + lp_norm(x, 3.0, np.sqrt(1.25))
    l0 = np.log(0.5) + lp_norm(x, 0.0, np.sqrt(2.0))
    return float(np.exp(l1 - np.logaddexp(l0, l1)))


@gen
def flag_only(tr):  # proposes the flag only: the new branch's latent comes from its prior
    ppl.flip(0.5) @ "c"


@gen
def prop_left():
    ppl.normal(0.5, 1.5) @ "a"


@gen
def prop_right():
    ppl.normal(2.0, 1.5) @ "b"


@gen
def flag_and_latent(tr):  # proposes the flag and the new branch's latent
    c = ppl.flip(0.5) @ "c"
    ppl.cond(c, prop_right, prop_left)() @ "br"


@pytest.mark.parametrize("proposal", [flag_only, flag_and_latent], ids=["flag_only", "flag_and_latent"])
def test_mh_custom_proposal_switching_branches_matches_exact(proposal):
    x = 1.5
    exact = _exact_switching(x)
    tr, _ = switching.generate(jax.random.key(0), ChoiceMap({("br", "x"): x, "c": 0}))
    kernel = mcmc.cycle(mcmc.mh(proposal), mcmc.mh(select(("br", "a"), ("br", "b"))))
    cs, xs = _chains(kernel, tr, jax.random.key(4), 32, 400, ["c", ("br", "x")])
    assert np.all(np.asarray(xs) == np.float32(x))
    z = _chain_mean_z(np.asarray(cs)[:, 50:], exact)
    assert abs(z) < 4.0, (np.asarray(cs).mean(), exact, z)


# ----------------------------------------------------------------------------- curve fit
XS = np.array([-2.0, -1.0, -0.3, 0.4, 1.2, 2.0], dtype=np.float32)
YS = np.array([-1.9, -0.8, 3.5, 0.5, 1.0, -4.0], dtype=np.float32)  # two gross outliers
P_OUT, S_IN, S_OUT, S_COEF = 0.2, 0.3, 5.0, 2.0


@gen
def inlier_y(x, slope, intercept):
    return ppl.normal(slope * x + intercept, S_IN) @ "v"


@gen
def outlier_y(x, slope, intercept):
    return ppl.normal(0.0, S_OUT) @ "v"


@gen
def point(x, slope, intercept):
    o = ppl.flip(P_OUT) @ "outlier"
    return ppl.cond(o, outlier_y, inlier_y)(x, slope, intercept) @ "y"


@gen
def curve(xs):
    slope = ppl.normal(0.0, S_COEF) @ "slope"
    intercept = ppl.normal(0.0, S_COEF) @ "intercept"
    return ppl.vmap(point, in_axes=(0, None, None))(xs, slope, intercept) @ "points"


def _exact_curve():
    """Enumerate the 2^6 outlier configurations; coefficients are conjugate given each one."""
    n = len(XS)
    logws, means = [], []
    X = np.stack([XS, np.ones(n)], axis=1).astype(np.float64)
    for flags in itertools.product([0, 1], repeat=n):
        f = np.array(flags, bool)
        lw = np.sum(np.where(f, np.log(P_OUT), np.log(1 - P_OUT)))
        lw += np.sum(stats.norm.logpdf(YS[f], 0.0, S_OUT))
        Xi, yi = X[~f], YS[~f].astype(np.float64)
        cov = S_COEF**2 * Xi @ Xi.T + S_IN**2 * np.eye(len(yi))
        lw += stats.multivariate_normal.logpdf(yi, np.zeros(len(yi)), cov) if len(yi) else 0.0
        prec = np.eye(2) / S_COEF**2 + Xi.T @ Xi / S_IN**2
        mean = np.linalg.solve(prec, Xi.T @ yi / S_IN**2)
        logws.append(lw)
        means.append(np.concatenate([f.astype(float), mean]))
    logws = np.array(logws)
    w = np.exp(logws - logws.max())
    w /= w.sum()
    return w @ np.array(means)  # P(outlier_i) for each point, then E[slope], E[intercept]


def test_curve_fit_with_outliers_cond_inside_vmap_matches_enumeration():
    exact = _exact_curve()
    obs = ChoiceMap({("points", "y", "v"): jnp.asarray(YS)})
    init = obs | ChoiceMap({("points", "outlier"): jnp.zeros(6, jnp.int32)})
    tr, _ = curve.generate(jax.random.key(0), init, jnp.asarray(XS))
    kernel = mcmc.cycle(mcmc.gibbs(("points", "outlier")),
                        mcmc.hmc(select("slope", "intercept"), 0.1, 10))
    flags, slope, intercept, ys = _chains(kernel, tr, jax.random.key(5), 16, 400,
                                          [("points", "outlier"), "slope", "intercept", ("points", "y", "v")])
    assert np.all(np.asarray(ys) == YS[None, None, :])
    burn = 50
    est = [np.asarray(flags)[:, burn:, i] for i in range(6)] + [np.asarray(slope)[:, burn:],
                                                                 np.asarray(intercept)[:, burn:]]
    for j, samples in enumerate(est):
        z = _chain_mean_z(samples, exact[j])
        assert abs(z) < 4.5, (j, samples.mean(), exact[j], z)
    # the two gross outliers are found
    assert exact[2] > 0.9 and exact[5] > 0.9


def test_debug_mode_under_vmap_of_cond():
    # debug checks inside branches must survive vmap (batched predicate: cond becomes select)
    with ppl.debug():
        trs = jax.vmap(lambda k: two_branch.simulate(k))(jax.random.split(jax.random.key(0), 4))
    assert np.all(np.isfinite(np.asarray(trs.score)))


def test_switch_index_out_of_range_is_an_error():
    from ppl.errors import ModelError

    with pytest.raises(ModelError, match="out of range"):
        ppl.switch(7, branch_a, branch_b)
    with pytest.raises(ModelError, match="out of range"):
        ppl.switch(-1, branch_a, branch_b)

    @gen
    def bad():
        i = ppl.categorical(probs=jnp.array([0.2, 0.3, 0.5])) @ "i"
        return ppl.switch(i, branch_a, branch_b)() @ "br"

    with ppl.debug():
        with pytest.raises(ModelError, match="out of range"):
            for s in range(20):  # some key draws index 2
                bad.generate(jax.random.key(s), ChoiceMap({"i": 2}))
    tr, w = bad.generate(jax.random.key(0), ChoiceMap({"i": 2}))  # outside debug: impossible trace
    assert float(tr.score) == -np.inf and float(w) == -np.inf


def test_mix_logits_must_match_components():
    from ppl.errors import ModelError

    @gen
    def bad():
        return ppl.mix(jnp.zeros(3), branch_a, branch_b)() @ "m"

    with pytest.raises(ModelError, match="3 components|one logit per component"):
        bad.simulate(jax.random.key(0))
