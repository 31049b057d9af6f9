"""GFI correctness on the reference models, checked against densities computed with scipy.stats.

Models: linear regression, hierarchical normal, a mixture via ``ppl.mix``, an HMM via
``ppl.scan`` and a model with ``ppl.cond``. For each: ``assess`` equals the independently
computed joint log density; ``generate`` with the prior as proposal has weight = log likelihood of
the constraints; ``update`` with one changed choice has weight = joint density ratio; ``update``
with changed arguments; ``regenerate`` (MH on a conjugate model reaches the exact posterior mean).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st
from scipy.special import log_softmax

import ppl
from ppl import ChoiceMap, gen, select

KEY = jax.random.key(0)
RTOL = 2e-5


def close(a, b, atol=1e-3):
    a, b = float(a), float(b)
    assert abs(a - b) <= atol + RTOL * abs(b), (a, b)


from _core_cases import (  # noqa: F401 - shared with test_core_jit.py
    XS, regression, regression_logp, SIGMAS, group, hierarchical, hierarchical_logp, comp_lo, comp_hi, MIX_LOGITS, mixture, mixture_logp, TRANS, MEANS, hmm_step, HMM, hmm_model, hmm_logp, branch_right, branch_left, cond_model, cond_parts, cond_logp, CASES, lik,
)


@pytest.mark.parametrize("name", list(CASES))
def test_assess_matches_scipy(name):
    model, args, logp, _ = CASES[name]
    for i in range(4):
        tr = model.simulate(jax.random.key(i), *args)
        close(tr.score, logp(tr.choices, args[0]))
        lp, rv = model.assess(tr.choices, *args)
        close(lp, logp(tr.choices, args[0]))
        np.testing.assert_allclose(np.asarray(jax.tree_util.tree_leaves(rv)[0]),
                                   np.asarray(jax.tree_util.tree_leaves(tr.retval)[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_generate_prior_proposal_weight_is_likelihood(name):
    model, args, logp, obs_addrs = CASES[name]
    data = model.simulate(jax.random.key(100), *args).choices
    obs = ChoiceMap({a: data[a] for a in obs_addrs})
    for i in range(3):
        tr, w = model.generate(jax.random.key(i), obs, *args)
        for a in obs_addrs:
            np.testing.assert_array_equal(np.asarray(tr.choices[a]), np.asarray(data[a]))
        close(w, lik(name, tr.choices, args))
        close(tr.score, logp(tr.choices, args[0]))


# one latent choice to change per model, and a new value for it
CHANGES = {
    "regression": ("slope", lambda v: v + 0.7),
    "hierarchical": ("mu", lambda v: v - 1.3),
    "mixture": (("m", "x"), lambda v: v + 0.4),
    "hmm": ("steps", None),  # handled below: one time step's z
    "cond": ("mu", lambda v: v + 0.9),
}


@pytest.mark.parametrize("name", list(CASES))
def test_update_one_choice_weight_is_density_ratio(name):
    model, args, logp, _ = CASES[name]
    tr = model.simulate(jax.random.key(3), *args)
    addr, fn = CHANGES[name]
    if name == "hmm":
        zs = np.asarray(tr.choices["steps", "z"])
        # change only step 2: a masked constraint over time
        flag = np.zeros(6, bool)
        flag[2] = True
        new_z = zs.copy()
        new_z[2] = 1 - new_z[2]
        cons = ChoiceMap({("steps", "z"): ppl.Masked(jnp.asarray(new_z), jnp.asarray(flag))})
    else:
        cons = ChoiceMap({addr: fn(tr.choices[addr])})
    tr2, w, discard = model.update(jax.random.key(4), tr, cons, *args)
    close(w, logp(tr2.choices, args[0]) - logp(tr.choices, args[0]))
    close(tr2.score, logp(tr2.choices, args[0]))
    if name == "hmm":
        assert int(tr2.choices["steps", "z"][2]) == 1 - int(zs[2])
        np.testing.assert_array_equal(np.delete(np.asarray(tr2.choices["steps", "z"]), 2), np.delete(zs, 2))
        d = discard["steps", "z"]
        assert int(np.asarray(d)[2]) == int(zs[2])
    else:
        np.testing.assert_allclose(np.asarray(discard[addr]), np.asarray(tr.choices[addr]))
        others = [a for a, _ in tr.choices if a != addr]
        for a in others:
            np.testing.assert_array_equal(np.asarray(tr2.choices[a]), np.asarray(tr.choices[a]))


def test_update_changed_args_regression():
    tr = regression.simulate(KEY, XS)
    xs2 = XS * 1.5 + 0.25
    tr2, w, discard = regression.update(jax.random.key(1), tr, ChoiceMap.empty(), xs2)
    close(w, regression_logp(tr.choices, xs2) - regression_logp(tr.choices, XS))
    assert discard.is_empty()
    np.testing.assert_allclose(np.asarray(tr2.args[0]), np.asarray(xs2))
    assert tr2.choices == tr.choices


def test_update_changed_args_hierarchical_and_cond():
    tr = hierarchical.simulate(KEY, SIGMAS)
    s2 = SIGMAS * 2.0
    _, w, _ = hierarchical.update(KEY, tr, ChoiceMap.empty(), s2)
    close(w, hierarchical_logp(tr.choices, s2) - hierarchical_logp(tr.choices, SIGMAS))
    tr = cond_model.simulate(KEY, 0.3)
    _, w, _ = cond_model.update(KEY, tr, ChoiceMap.empty(), 0.8)
    close(w, cond_logp(tr.choices, 0.8) - cond_logp(tr.choices, 0.3))


def test_update_no_change_is_identity():
    for name, (model, args, _, _) in CASES.items():
        tr = model.simulate(jax.random.key(7), *args)
        tr2, w, d = model.update(jax.random.key(8), tr, ChoiceMap.empty(), *args)
        assert abs(float(w)) < 1e-5, name
        assert tr2.choices == tr.choices, name
        assert d.is_empty(), name


# ---------------------------------------------------------------- control-path changes (cond)
def _trace_with_branch(c_value):
    for i in range(50):
        tr = cond_model.simulate(jax.random.key(i), 0.3)
        if int(tr.choices["c"]) == c_value:
            return tr
    raise AssertionError("no trace with the wanted branch")


@pytest.mark.parametrize("start", [0, 1])
def test_update_branch_switch_weight_by_hand(start):
    tr = _trace_with_branch(start)
    ch = tr.choices
    tr2, w, discard = cond_model.update(jax.random.key(11), tr, ChoiceMap({"c": jnp.asarray(1 - start)}), 0.3)
    ch2 = tr2.choices
    # Gen's update: log p(t') - log p(t) - log q(fresh): c and y are visited in both traces
    # (new - old log density), the new branch's fresh choices contribute nothing (p - q), the
    # discarded old branch's choices contribute -log p.
    head_old, br_old, x_old = cond_parts(ch, 0.3)
    head_new, br_new, x_new = cond_parts(ch2, 0.3)
    y = float(ch["y"])
    expected = (head_new - head_old) + st.norm.logpdf(y, x_new, 0.5) - st.norm.logpdf(y, x_old, 0.5) - br_old
    close(w, expected)
    close(tr2.score, cond_logp(ch2, 0.3))
    old_branch, new_branch = (["b", "e"], ["a"]) if start == 0 else (["a"], ["b", "e"])
    assert sorted(a[1] for a, _ in ch2 if a[0] == "br") == sorted(new_branch)
    # the discard holds the old value of c and the old branch's choices
    assert int(discard["c"]) == start
    assert sorted(a[1] for a, _ in discard if a[0] == "br") == sorted(old_branch)
    for a in old_branch:
        assert float(discard["br", a]) == float(ch["br", a])
    # reversing the move with the discard restores the trace; every choice is now constrained, so
    # the weight is the density ratio: w_back = log p(t) - log p(t') = -(w + log p(new branch))
    back, w_back, _ = cond_model.update(jax.random.key(12), tr2, discard, 0.3)
    close(w_back, -float(w) - br_new)
    assert back.choices == ch


def test_regenerate_branch_switch_weight_by_hand():
    tr = _trace_with_branch(0)
    y = float(tr.choices["y"])
    seen = set()
    for i in range(40):
        tr2, w, discard = cond_model.regenerate(jax.random.key(i), tr, select("c"), 0.3)
        ch2 = tr2.choices
        _, _, x_old = cond_parts(tr.choices, 0.3)
        _, _, x_new = cond_parts(ch2, 0.3)
        # c resampled from its prior (0), branch choices fresh/discarded (0), y: new - old
        close(w, st.norm.logpdf(y, x_new, 0.5) - st.norm.logpdf(y, x_old, 0.5))
        close(tr2.score, cond_logp(ch2, 0.3))
        assert int(discard["c"]) == 0
        assert float(ch2["mu"]) == float(tr.choices["mu"])
        seen.add(int(ch2["c"]))
    assert seen == {0, 1}


def test_regenerate_inside_branch_weight():
    tr = _trace_with_branch(1)
    tr2, w, discard = cond_model.regenerate(jax.random.key(5), tr, select("mu"), 0.3)
    ch, ch2 = tr.choices, tr2.choices
    # mu resampled (0); branch site a: new - old given the new mu; y unchanged density
    expected = (st.norm.logpdf(float(ch["br", "a"]), float(ch2["mu"]) + 1, 1)
                - st.norm.logpdf(float(ch["br", "a"]), float(ch["mu"]) + 1, 1))
    close(w, expected)
    assert float(discard["mu"]) == float(ch["mu"])


def test_update_mixture_component_switch():
    tr = mixture.simulate(KEY, 1.0)
    k = int(tr.choices["m", "component"])
    tr2, w, d = mixture.update(KEY, tr, ChoiceMap({("m", "component"): jnp.asarray(1 - k)}), 1.0)
    ch, ch2 = tr.choices, tr2.choices
    lw = log_softmax(np.log([0.3, 0.7]))
    # both components visit "x" (same shape): switching carries its value into the new component
    # (Gen's switch semantics), so every choice is visited in both traces and the weight is the
    # density ratio; only the component index is discarded.
    assert float(ch2["m", "x"]) == float(ch["m", "x"])
    close(w, mixture_logp(ch2, 1.0) - mixture_logp(ch, 1.0))
    assert lw[1 - k] - lw[k] != 0.0
    close(tr2.score, mixture_logp(ch2, 1.0))
    assert ("m", "x") not in d
    assert int(d["m", "component"]) == k


# ------------------------------------------------------------- MH with regenerate (conjugate)
N_OBS = 5
Y_OBS = jnp.array([0.8, 1.9, 1.1, 2.4, 0.3])


@gen
def conjugate():
    mu = ppl.normal(0.0, 1.0) @ "mu"
    return ppl.normal(jnp.full(N_OBS, mu), 1.0) @ "y"


def test_mh_regenerate_conjugate_posterior_mean():
    full = os.environ.get("PPL_FULL_STATS") == "1"
    n_chains, n_steps, burn = (200, 2000, 200) if full else (64, 500, 100)
    post_prec = 1.0 + N_OBS
    post_mean = float(Y_OBS.sum()) / post_prec
    sel = select("mu")

    def chain(key):
        tr, _ = conjugate.generate(key, ChoiceMap({"y": Y_OBS}))

        def step(tr, k):
            k1, k2 = jax.random.split(k)
            tr2, w, _ = conjugate.regenerate(k1, tr, sel)
            accept = jnp.log(jax.random.uniform(k2)) < w
            tr = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), tr2, tr)
            return tr, tr.choices["mu"]

        _, mus = jax.lax.scan(step, tr, jax.random.split(key, n_steps))
        return mus[burn:]

    mus = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(2024), n_chains))
    chain_means = np.asarray(mus.mean(axis=1), np.float64)
    est = chain_means.mean()
    mcse = chain_means.std(ddof=1) / np.sqrt(n_chains)  # chains are independent
    assert abs(est - post_mean) < 4.0 * mcse + 1e-3, (est, post_mean, mcse)
    # the spread matches the exact posterior variance too (loose: 25%)
    var = np.asarray(mus, np.float64).var()
    assert abs(var - 1 / post_prec) < 0.25 / post_prec, (var, 1 / post_prec)
