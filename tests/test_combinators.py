"""Combinators nested inside each other: weights of every GFI method checked site by site.

Each model here comes with an independent function giving the log density of every site from a
(concrete) choice map. The documented weight convention then predicts every weight:
generate = sum over constrained sites; update = sum over sites present before and after of
(new - old); regenerate = the same minus the selected (resampled) sites.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

import ppl
from ppl import ChoiceMap, Masked, gen, select

P1, P2 = 0.3, 0.6


def vf(chm, path):
    """(value, present flag) at ``path`` (numpy), handling masked leaves; None if absent."""
    node = chm.get_submap(path)
    raw = node.raw_value()
    if raw is None:
        return None
    if isinstance(raw, Masked):
        return np.asarray(raw.value), np.broadcast_to(np.asarray(raw.flag), np.shape(raw.value))
    return np.asarray(raw), np.ones(np.shape(raw), bool)


def close(a, b):
    assert abs(float(a) - float(b)) <= 2e-3 + 1e-4 * abs(float(b)), (float(a), float(b))


def expected_update(old_sites, new_sites, resampled=(), removed=False):
    """Gen's weights: visited-in-both sites contribute new - old (0 if resampled); ``update``
    (``removed=True``) also subtracts the log density of removed sites; fresh ones contribute 0."""
    both = set(old_sites) & set(new_sites)
    w = sum(new_sites[s] - old_sites[s] for s in both if s not in resampled)
    if removed:
        w -= sum(old_sites[s] for s in set(old_sites) - set(new_sites))
    return w


# ------------------------------------------------------------------- nested cond (cond in cond)
@gen
def leaf_a(mu):
    return ppl.normal(mu + 1.0, 1.0) @ "a"


@gen
def leaf_b(mu):
    return ppl.normal(mu - 1.0, 2.0) @ "b"


@gen
def inner_cond(mu):
    c = ppl.flip(P2) @ "c2"
    return ppl.cond(c, leaf_a, leaf_b)(mu) @ "in"


@gen
def nested(mu):
    c = ppl.flip(P1) @ "c1"
    x = ppl.cond(c, inner_cond, leaf_b)(mu) @ "out"
    return ppl.normal(x, 0.5) @ "y"


def nested_sites(ch, mu):
    s = {}
    c1 = int(ch["c1"])
    s["c1"] = st.bernoulli.logpmf(c1, P1)
    if c1:
        c2 = int(ch["out", "c2"])
        s["c2"] = st.bernoulli.logpmf(c2, P2)
        if c2:
            x = float(ch["out", "in", "a"])
            s["in/a"] = st.norm.logpdf(x, mu + 1, 1)
        else:
            x = float(ch["out", "in", "b"])
            s["in/b"] = st.norm.logpdf(x, mu - 1, 2)
    else:
        x = float(ch["out", "b"])
        s["out/b"] = st.norm.logpdf(x, mu - 1, 2)
    s["y"] = st.norm.logpdf(float(ch["y"]), x, 0.5)
    return s


def test_nested_cond_all_methods():
    mu = 0.5
    seen_paths = set()
    for i in range(6):
        tr = nested.simulate(jax.random.key(i), mu)
        old = nested_sites(tr.choices, mu)
        close(tr.score, sum(old.values()))
        close(nested.assess(tr.choices, mu)[0], sum(old.values()))
        seen_paths.add(tuple(sorted(old)))
        # generate with y observed: weight = log p(y | rest)
        gtr, w = nested.generate(jax.random.key(i + 50), ChoiceMap({"y": tr.choices["y"]}), mu)
        close(w, nested_sites(gtr.choices, mu)["y"])
        # update: flip the outer branch
        tr2, w, d = nested.update(jax.random.key(i + 100), tr, ChoiceMap({"c1": 1 - tr.choices["c1"]}), mu)
        new = nested_sites(tr2.choices, mu)
        close(w, expected_update(old, new, removed=True))
        close(tr2.score, sum(new.values()))
        assert set(a for a, _ in d) == set(a for a, _ in tr.choices) - set(a for a, _ in tr2.choices) | {"c1"}
        # regenerate every selection of interest
        for sel, res in [(select("c1"), {"c1"}), (select(("out", "c2")), {"c2"}), (select("out"), {"c2", "in/a", "in/b", "out/b"})]:
            tr3, w3, _ = nested.regenerate(jax.random.key(i + 200), tr, sel, mu)
            new3 = nested_sites(tr3.choices, mu)
            close(w3, expected_update(old, new3, res))
            close(tr3.score, sum(new3.values()))
    assert len(seen_paths) >= 2


# ----------------------------------------------------------------------------- cond inside scan
T = 5


@gen
def cstep(x, _):
    c = ppl.flip(P1) @ "c"
    x = ppl.cond(c, leaf_a, leaf_b)(x) @ "br"
    ppl.normal(x, 0.5) @ "y"
    return x, x


CSCAN = ppl.scan(cstep, length=T)


@gen
def cond_scan_model(x0):
    return CSCAN(x0, None) @ "steps"


def cscan_sites(ch, x0):
    c, _ = vf(ch, ("steps", "c"))
    a = vf(ch, ("steps", "br", "a"))
    b = vf(ch, ("steps", "br", "b"))
    y, _ = vf(ch, ("steps", "y"))
    s, prev = {}, x0
    for t in range(T):
        s[f"c{t}"] = st.bernoulli.logpmf(int(c[t]), P1)
        if c[t]:
            assert a[1][t] and (b is None or not b[1][t])
            x = float(a[0][t])
            s[f"a{t}"] = st.norm.logpdf(x, prev + 1, 1)
        else:
            assert b[1][t] and (a is None or not a[1][t])
            x = float(b[0][t])
            s[f"b{t}"] = st.norm.logpdf(x, prev - 1, 2)
        s[f"y{t}"] = st.norm.logpdf(float(y[t]), x, 0.5)
        prev = x
    return s


def test_cond_inside_scan():
    x0 = 0.2
    tr = cond_scan_model.simulate(jax.random.key(3), x0)
    old = cscan_sites(tr.choices, x0)
    close(tr.score, sum(old.values()))
    close(cond_scan_model.assess(tr.choices, x0)[0], sum(old.values()))
    # generate: observe y at every step (stacked over time)
    gtr, w = cond_scan_model.generate(jax.random.key(4), ChoiceMap({("steps", "y"): tr.choices["steps", "y"]}), x0)
    g = cscan_sites(gtr.choices, x0)
    close(w, sum(v for k, v in g.items() if k.startswith("y")))
    # update: switch the branch at step 2 only (masked constraint over time)
    c = np.asarray(tr.choices["steps", "c"])
    flag = np.arange(T) == 2
    cons = ChoiceMap({("steps", "c"): Masked(jnp.asarray(1 - c), jnp.asarray(flag))})
    tr2, w, d = cond_scan_model.update(jax.random.key(5), tr, cons, x0)
    new = cscan_sites(tr2.choices, x0)
    assert int(tr2.choices["steps", "c"][2]) == 1 - int(c[2])
    close(w, expected_update(old, new, removed=True))
    close(tr2.score, sum(new.values()))
    dc = vf(d, ("steps", "c"))
    assert dc[1][2] and int(dc[0][2]) == int(c[2]) and not dc[1][[0, 1, 3, 4]].any()
    # regenerate all c's
    tr3, w3, _ = cond_scan_model.regenerate(jax.random.key(6), tr, select(("steps", "c")), x0)
    new3 = cscan_sites(tr3.choices, x0)
    close(w3, expected_update(old, new3, {f"c{t}" for t in range(T)}))
    close(tr3.score, sum(new3.values()))


# ---------------------------------------------------------------------- mix inside vmap and scan
@gen
def cmix(mu):
    x = ppl.mix(jnp.log(jnp.array([P1, 1 - P1])), leaf_a, leaf_b)(mu) @ "m"
    return ppl.normal(x, 0.5) @ "y"


VMIX = ppl.vmap(cmix)


def vmix_sites(ch, mus):
    k, _ = vf(ch, ("m", "component"))
    a, b = vf(ch, ("m", "a")), vf(ch, ("m", "b"))
    y, _ = vf(ch, ("y",))
    s = {}
    for i, mu in enumerate(np.asarray(mus)):
        s[f"k{i}"] = np.log([P1, 1 - P1][int(k[i])])
        if int(k[i]) == 0:
            x = float(a[0][i])
            s[f"a{i}"] = st.norm.logpdf(x, mu + 1, 1)
        else:
            x = float(b[0][i])
            s[f"b{i}"] = st.norm.logpdf(x, mu - 1, 2)
        s[f"y{i}"] = st.norm.logpdf(float(y[i]), x, 0.5)
    return s


def test_mix_inside_vmap():
    mus = jnp.array([0.0, 1.0, -1.0, 2.0])
    tr = VMIX.simulate(jax.random.key(9), mus)
    old = vmix_sites(tr.choices, mus)
    close(tr.score, sum(old.values()))
    close(VMIX.assess(tr.choices, mus)[0], sum(old.values()))
    k = np.asarray(tr.choices["m", "component"])
    tr2, w, _ = VMIX.update(jax.random.key(10), tr, ChoiceMap({("m", "component"): jnp.asarray(1 - k)}), mus)
    new = vmix_sites(tr2.choices, mus)
    close(w, expected_update(old, new, removed=True))
    # changed arguments
    mus2 = mus + 0.5
    tr3, w3, _ = VMIX.update(jax.random.key(11), tr, ChoiceMap.empty(), mus2)
    close(w3, expected_update(old, vmix_sites(tr3.choices, mus2)))
    tr4, w4, _ = VMIX.regenerate(jax.random.key(12), tr, select("m"), mus)
    new4 = vmix_sites(tr4.choices, mus)
    close(w4, expected_update(old, new4, {s for s in new4 if not s.startswith("y")}))


@gen
def mstep(x, _):
    x = ppl.mix(jnp.log(jnp.array([P1, 1 - P1])), leaf_a, leaf_b)(x) @ "m"
    return x, x


def test_mix_inside_scan_generate_and_assess():
    sc = ppl.scan(mstep, length=4)
    tr = sc.simulate(jax.random.key(0), 0.0, None)
    gtr, w = sc.generate(jax.random.key(1), tr.choices, 0.0, None)
    close(w, tr.score)
    assert gtr.choices == tr.choices
    close(sc.assess(tr.choices, 0.0, None)[0], tr.score)


# -------------------------------------------------------------------- scan inside vmap, vmap in scan
@gen
def rw(x, _):
    x = ppl.normal(x, 1.0) @ "x"
    return x, x


def rw_logp(xs, x0):
    xs = np.asarray(xs, np.float64)
    prev = np.concatenate([[x0], xs[:-1]])
    return st.norm.logpdf(xs, prev, 1.0).sum()


def test_scan_inside_vmap_and_vmap_inside_scan():
    vs = ppl.vmap(ppl.scan(rw, length=3), in_axes=(0, None))
    x0 = jnp.array([0.0, 5.0])
    tr = vs.simulate(jax.random.key(0), x0, None)
    xs = np.asarray(tr.choices["x"])
    assert xs.shape == (2, 3)
    close(tr.score, rw_logp(xs[0], 0.0) + rw_logp(xs[1], 5.0))
    new = tr.choices["x"].at[1, 1].set(7.0)
    tr2, w, _ = vs.update(jax.random.key(1), tr, ChoiceMap({"x": new}), x0, None)
    close(w, rw_logp(new[1], 5.0) - rw_logp(xs[1], 5.0))

    @gen
    def vstep(carry, _):
        z = ppl.normal(carry, 1.0).__class__  # noqa: F841 (placeholder to keep linters quiet)
        xs = ppl.vmap(ppl.normal, in_axes=(0, None))(carry, 1.0) @ "xs"
        return xs, xs.sum()

    sc = ppl.scan(vstep, length=3)
    tr = sc.simulate(jax.random.key(2), jnp.zeros(4), None)
    assert tr.choices["xs"].shape == (3, 4)
    close(sc.assess(tr.choices, jnp.zeros(4), None)[0], tr.score)
    tr2, w, _ = sc.regenerate(jax.random.key(3), tr, ppl.select_none(), jnp.zeros(4), None)
    close(w, 0.0)


# --------------------------------------------------------------------------------- switch (3-way)
@gen
def leaf_c(mu):
    u = ppl.uniform(mu, mu + 2.0) @ "u"
    return u


@gen
def three(mu):
    i = ppl.categorical(probs=jnp.array([0.2, 0.3, 0.5])) @ "i"
    x = ppl.switch(i, leaf_a, leaf_b, leaf_c)(mu) @ "sw"
    return ppl.normal(x, 0.5) @ "y"


def three_sites(ch, mu):
    i = int(ch["i"])
    s = {"i": np.log([0.2, 0.3, 0.5][i])}
    if i == 0:
        x = float(ch["sw", "a"])
        s["a"] = st.norm.logpdf(x, mu + 1, 1)
    elif i == 1:
        x = float(ch["sw", "b"])
        s["b"] = st.norm.logpdf(x, mu - 1, 2)
    else:
        x = float(ch["sw", "u"])
        s["u"] = st.uniform.logpdf(x, mu, 2.0)
    s["y"] = st.norm.logpdf(float(ch["y"]), x, 0.5)
    return s


@pytest.mark.parametrize("target", [0, 1, 2])
def test_switch_three_branches_update_every_transition(target):
    mu = 0.3
    for i in range(4):
        tr = three.simulate(jax.random.key(i), mu)
        old = three_sites(tr.choices, mu)
        close(tr.score, sum(old.values()))
        tr2, w, d = three.update(jax.random.key(i + 9), tr, ChoiceMap({"i": jnp.asarray(target)}), mu)
        new = three_sites(tr2.choices, mu)
        close(w, expected_update(old, new, removed=True))
        close(tr2.score, sum(new.values()))
        if int(tr.choices["i"]) != target:  # old branch's choices are in the discard
            old_branch = [a for a, _ in tr.choices if isinstance(a, tuple) and a[0] == "sw"]
            for a in old_branch:
                assert float(d[a]) == float(tr.choices[a])
        # constraining the new branch's choice too: it contributes its log density
        new_addr = {0: ("sw", "a"), 1: ("sw", "b"), 2: ("sw", "u")}[target]
        cons = ChoiceMap({"i": jnp.asarray(target), new_addr: jnp.asarray(mu + 0.5)})
        tr3, w3, _ = three.update(jax.random.key(i + 19), tr, cons, mu)
        new3 = three_sites(tr3.choices, mu)
        fresh_constrained = new3[new_addr[1]] if int(tr.choices["i"]) != target else 0.0
        close(w3, expected_update(old, new3, removed=True) + fresh_constrained)


def test_switch_under_jit_and_vmap_masks():
    trs = jax.vmap(lambda k: three.simulate(k, 0.3))(jax.random.split(jax.random.key(0), 200))
    i = np.asarray(trs.choices["i"])
    for addr, b in ((("sw", "a"), 0), (("sw", "b"), 1), (("sw", "u"), 2)):
        _, flag = vf(trs.choices, addr)
        np.testing.assert_array_equal(flag, i == b)
    lps, _ = jax.vmap(lambda ch: three.assess(ch, 0.3))(trs.choices)
    np.testing.assert_allclose(np.asarray(lps), np.asarray(trs.score), rtol=1e-5, atol=1e-4)


def test_assess_under_jit_with_repeat_and_scan_inside_an_untaken_branch():
    """A traced cond whose branch holds a repeat or a scan: the untaken branch's choices are masked by
    one scalar flag, which each copy/step must see (regression: assess raised a ShapeError)."""

    @ppl.gen
    def leaf(x):
        return ppl.normal(x, 1.0) @ "a"

    @ppl.gen
    def step(c, _):
        return ppl.normal(c, 1.0) @ "s", None

    @ppl.gen
    def t_branch(x):
        return ppl.normal(x, 1.0) @ "b"

    @ppl.gen
    def f_branch(x):
        r = leaf.repeat(2)(x) @ "r"
        c, _ = ppl.scan(step, length=3)(x, None) @ "q"
        return jnp.mean(r) + c

    @ppl.gen
    def model(x):
        c = ppl.flip(0.4) @ "c"
        return ppl.cond(c, t_branch, f_branch)(x) @ "v"

    def both(k):
        tr = model.simulate(k, 0.3)
        return tr.get_score(), model.assess(tr.choices, 0.3)[0], tr.choices["c"]

    seen = set()
    for i in range(6):
        score, lp, c = jax.jit(both)(jax.random.key(i))
        np.testing.assert_allclose(float(lp), float(score), rtol=1e-6)
        seen.add(int(c))
    assert seen == {0, 1}
