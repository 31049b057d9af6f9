"""The trace protocol (``ppl.core.Trace``): get_gen_fn, get_args, get_retval, get_score,
site_score, batch_axes and select, on every trace type (distribution, ``@gen``, vmap/repeat,
scan, cond/switch, mix) at top level and nested inside each other.

Exact answers: ``get_score`` equals ``assess`` of the trace's choices; ``site_score`` equals the sum
of the ``get_scores`` leaf (and the scores of all sites sum to the trace's score); a batch of
traces built with ``vmap(..., out_axes=tr.batch_axes(0))`` gives, per element, the same trace as a
separate call, and stores the model arguments once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.choicemap import Masked

KEY = jax.random.key(0)


@ppl.gen
def step(x, _):
    x = ppl.normal(x, 1.0) @ "x"
    return x, x


@ppl.gen
def left(mu):
    return ppl.normal(mu - 1.0, 1.0) @ "a"


@ppl.gen
def right(mu):
    return ppl.normal(mu + 1.0, 2.0) @ "a"


@ppl.gen
def other(mu):
    return ppl.normal(mu, 0.5) @ "b"


@ppl.gen
def inner(mu, n):
    z = ppl.normal(mu, 1.0) @ "z"
    return ppl.normal(jnp.full(n, z), 1.0) @ "ys"


@ppl.gen
def nested(mu):
    """Every combinator, nested: vmap of a @gen, scan, cond (shared address), mix (distinct)."""
    g = ppl.vmap(inner, in_axes=(0, None))(jnp.stack([mu, mu + 1.0]), 3) @ "groups"
    _, xs = ppl.scan(step, length=4)(mu, None) @ "chain"
    c = ppl.flip(0.5) @ "c"
    a = ppl.cond(c, right, left)(mu) @ "branch"
    m = ppl.mix(jnp.log(jnp.array([0.4, 0.6])), left, other)(mu) @ "m"
    return jnp.sum(g) + jnp.sum(xs) + a + m


MU = jnp.array(0.3)

# (generative function, args) for top-level traces of every type
CASES = {
    "dist": (ppl.normal, (jnp.array(0.5), jnp.array(2.0))),
    "gen": (nested, (MU,)),
    "vmap": (ppl.vmap(inner, in_axes=(0, None)), (jnp.array([0.0, 1.0, 2.0]), 2)),
    "repeat": (ppl.repeat(ppl.normal, 3), (jnp.array(0.0), jnp.array(1.0))),
    "scan": (ppl.scan(step, length=5), (jnp.array(0.0), None)),
    "cond": (ppl.cond(True, right, left).gf, (jnp.array(1, jnp.int32), MU)),
    "mix": (ppl.mix(jnp.zeros(2), left, other).gf, (jnp.log(jnp.array([0.3, 0.7])), MU)),
}


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", list(CASES))
def test_accessors(name):
    gf, args = CASES[name]
    tr = gf.simulate(KEY, *args)
    assert tr.get_gen_fn() == gf
    _same(tr.get_args(), args)
    _same(tr.get_retval(), tr.retval)
    assert tr.get_score() is tr.score
    logp, _ = gf.assess(tr.get_choices(), *args)
    np.testing.assert_allclose(float(tr.get_score()), float(logp), rtol=1e-5, atol=1e-5)


def _site_paths(tr):
    return [p for p, _ in tr.get_scores().leaves()]


def _leaf_total(v):
    if isinstance(v, Masked):
        return float(jnp.sum(jnp.where(v.flag, v.value, 0.0)))
    return float(jnp.sum(v))


@pytest.mark.parametrize("name", list(CASES))
def test_site_score_matches_scores(name):
    gf, args = CASES[name]
    tr = gf.simulate(KEY, *args)
    leaves = tr.get_scores().leaves()
    assert leaves
    for path, v in leaves:
        np.testing.assert_allclose(float(tr.site_score(path)), _leaf_total(v), rtol=1e-6, atol=1e-6)
    total = sum(float(tr.site_score(p)) for p, _ in leaves)
    np.testing.assert_allclose(total, float(tr.get_score()), rtol=1e-5, atol=1e-5)
    assert tr.site_score(("no_such_site",)) is None


def test_site_score_nested_paths_and_prefixes():
    tr = nested.simulate(KEY, MU)
    scores = tr.get_scores()
    # a prefix sums every site below it; a single string is a top-level address
    np.testing.assert_allclose(float(tr.site_score("groups")),
                               float(jnp.sum(scores["groups", "z"]) + jnp.sum(scores["groups", "ys"])), rtol=1e-6)
    np.testing.assert_allclose(float(tr.site_score(("groups", "ys"))), float(jnp.sum(scores["groups", "ys"])),
                               rtol=1e-6)
    assert tr.site_score(("groups", "nope")) is None
    # the shared branch address: whichever branch was taken
    np.testing.assert_allclose(float(tr.site_score(("branch", "a"))), _leaf_total(scores.get_submap(("branch", "a")).raw_value()),
                               rtol=1e-6)
    # mix: the component not taken has no site in a concrete trace (get_scores omits it) and a
    # masked one (counting 0) when the trace is traced
    comp = int(tr.choices["m", "component"])
    taken, untaken = [("m", "a"), ("m", "b")][comp], [("m", "a"), ("m", "b")][1 - comp]
    assert tr.site_score(untaken) is None
    assert float(jax.jit(lambda t: t.site_score(untaken))(tr)) == 0.0
    np.testing.assert_allclose(float(jax.jit(lambda t: t.site_score(taken))(tr)), float(tr.site_score(taken)),
                               rtol=1e-6)
    np.testing.assert_allclose(float(tr.site_score(taken) + tr.site_score(("m", "component"))),
                               float(tr.site_score("m")), rtol=1e-6)


def test_site_score_on_subtraces_and_under_jit():
    tr = nested.simulate(KEY, MU)
    for addr in ("groups", "chain", "branch", "m"):
        sub = tr.get_subtrace(addr)
        np.testing.assert_allclose(float(sub.site_score(())), float(tr.site_score(addr)), rtol=1e-6)
        np.testing.assert_allclose(float(sub.get_score()), float(tr.site_score(addr)), rtol=1e-5, atol=1e-5)
    jitted = jax.jit(lambda t: t.site_score(("chain", "x")))(tr)
    np.testing.assert_allclose(float(jitted), float(tr.site_score(("chain", "x"))), rtol=1e-6)


def _check_element(batch_choices, i, one_choices):
    """Entry ``i`` of a batch of choice maps holds every (present) choice of ``one_choices``."""
    n = 0
    for path, v in one_choices.leaves():
        b = batch_choices.get_submap(path).raw_value()
        if isinstance(b, Masked):  # branch choices of a batch are masked (the index varies)
            assert bool(b.flag[i]), path
            b = b.value
        np.testing.assert_array_equal(np.asarray(b[i]), np.asarray(v))
        n += 1
    assert n > 0


@pytest.mark.parametrize("name", list(CASES))
def test_batch_axes_vmap_roundtrip(name):
    gf, args = CASES[name]
    like = gf.simulate(KEY, *args)
    keys = jax.random.split(jax.random.key(7), 3)
    batch = jax.vmap(lambda k: gf.simulate(k, *args), out_axes=like.batch_axes(0))(keys)
    # the model arguments are stored once, not once per trace
    _same(batch.get_args(), args)
    assert all(np.shape(x)[:1] == (3,) for x in jax.tree_util.tree_leaves(batch.get_choices()))
    # per element: the same trace as a separate call, and assess agrees (vmapped over the batch)
    for i in range(3):
        _check_element(batch.get_choices(), i, gf.simulate(keys[i], *args).get_choices())
    logps = jax.vmap(lambda t: gf.assess(t.get_choices(), *t.get_args())[0], in_axes=(like.batch_axes(0),))(batch)
    np.testing.assert_allclose(np.asarray(logps), np.asarray(batch.get_score()), rtol=1e-5, atol=1e-5)
    # batch_axes with another axis, used as in_axes
    moved = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, 0, -1) if jnp.ndim(x) else x,
                                   jax.vmap(lambda t: t, in_axes=(like.batch_axes(0),),
                                            out_axes=like.batch_axes(-1))(batch))
    del moved  # the round trip itself is the check: mismatched axes would raise


def test_select_keeps_other_args():
    gf, args = CASES["gen"]
    a = gf.simulate(jax.random.key(1), *args)
    b = gf.simulate(jax.random.key(2), MU + 10.0)
    for pred, want in ((jnp.array(True), a), (jnp.array(False), b)):
        out = a.select(pred, b)
        _same(out.get_choices(), want.get_choices())
        _same(out.get_score(), want.get_score())
        _same(out.get_retval(), want.get_retval())
        _same(out.get_args(), b.get_args())  # always the other's arguments
        assert out.get_gen_fn() == gf


@pytest.mark.parametrize("name", list(CASES))
def test_select_every_trace_type_under_vmap(name):
    gf, args = CASES[name]
    like = gf.simulate(KEY, *args)
    ka, kb = jax.random.split(jax.random.key(3), 2), jax.random.split(jax.random.key(4), 2)
    axes = like.batch_axes(0)
    sim = jax.vmap(lambda k: gf.simulate(k, *args), out_axes=axes)
    a, b = sim(ka), sim(kb)
    pred = jnp.array([True, False])
    out = jax.vmap(lambda p, x, y: x.select(p, y), in_axes=(0, axes, axes), out_axes=axes)(pred, a, b)
    view = jax.vmap(lambda t: (t.get_choices(), t.get_scores()), in_axes=(axes,))  # same structure for all
    for i, src in ((0, a), (1, b)):
        _same(jax.tree_util.tree_map(lambda x: x[i], view(out)), jax.tree_util.tree_map(lambda x: x[i], view(src)))
    _same(out.get_args(), args)
    np.testing.assert_array_equal(np.asarray(out.get_score()), np.asarray([a.get_score()[0], b.get_score()[1]]))
