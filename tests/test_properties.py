"""Property-based tests (hypothesis): random small models built from a grammar of sites, nested
calls and combinators, with random constraints.

Properties: ``assess`` of simulated choices equals ``trace.score``; ``generate`` with every choice
constrained has weight = score; ``update`` with no change has weight 0 and returns the same trace;
``generate`` with a random subset of constraints keeps them and scores consistently; ``update`` to
the choices of another trace has weight = score difference (models without branching).
Each model is compiled once (all checks run inside one ``jax.jit``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as hs

import ppl
from ppl import ChoiceMap, gen, select

# ------------------------------------------------------------------------------ model grammar
LEAVES = hs.sampled_from(["normal", "normal2", "gamma", "flip", "cat"])


def _items(children):
    return hs.lists(children, min_size=1, max_size=3)


SPEC = hs.recursive(
    _items(LEAVES),
    lambda inner: _items(
        hs.one_of(
            LEAVES,
            hs.tuples(hs.just("sub"), inner),
            hs.tuples(hs.just("repeat"), hs.integers(2, 3), inner),
            hs.tuples(hs.just("scan"), hs.integers(2, 3), inner),
            hs.tuples(hs.just("cond"), inner, inner),
        )
    ),
    max_leaves=5,
)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def build(spec, prefix="s"):
    """A @gen function ``f(x) -> float32 scalar`` following ``spec``; sites depend on earlier ones.

    The two branches of a ``cond`` use different address prefixes (an address that is a site in one
    branch and a nested call in the other is an error)."""

    @gen
    def model(x):
        acc = _f32(x)
        for i, item in enumerate(spec):
            addr = f"{prefix}{i}"
            kind = item if isinstance(item, str) else item[0]
            if kind == "normal":
                v = ppl.normal(acc * 0.5, 1.0) @ addr
            elif kind == "normal2":
                v = jnp.mean(ppl.normal(jnp.stack([acc, -acc]), 0.7) @ addr)
            elif kind == "gamma":
                v = ppl.gamma(2.0, 1.0 + 0.1 * jnp.abs(acc)) @ addr
            elif kind == "flip":
                v = (ppl.flip(jax.nn.sigmoid(acc)) @ addr).astype(jnp.float32)
            elif kind == "cat":
                v = (ppl.categorical(logits=jnp.stack([0.0 * acc, 0.1 * acc, -0.1 * acc])) @ addr).astype(jnp.float32)
            elif kind == "sub":
                v = build(item[1])(acc) @ addr
            elif kind == "repeat":
                v = jnp.mean(build(item[2]).repeat(item[1])(acc) @ addr)
            elif kind == "scan":
                body = build(item[2])

                @gen
                def step(c, _, body=body):
                    r = body(c) @ "body"
                    return r, r

                _, ys = ppl.scan(step, length=item[1])(acc, None) @ addr
                v = jnp.mean(ys)
            elif kind == "cond":
                c = ppl.flip(0.4) @ (addr + "c")
                v = ppl.cond(c, build(item[1], "t"), build(item[2], "f"))(acc) @ addr
            else:  # pragma: no cover
                raise ValueError(kind)
            acc = _f32(acc + 0.3 * v)
        return acc

    return model


def has_cond(spec):
    return any(not isinstance(it, str) and (it[0] == "cond" or any(
        has_cond(s) for s in it[1:] if isinstance(s, list))) for it in spec)


def close(a, b, tol=1e-3):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.abs(a - b) <= tol + 1e-4 * np.abs(b)), (a, b)


def same_choices(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


FULL = os.environ.get("PPL_FULL_STATS") == "1"
# each example compiles its own program (~5-25 s for one with a cond): 5 by default (the derandomized
# first five: a site, a scan over cond and repeat, a categorical, cond/scan/repeat nested in sub and
# repeat, a site again), 40 under PPL_FULL_STATS=1 (cond inside cond, scan in sub without branching...)
SETTINGS = settings(max_examples=40 if FULL else 5, deadline=None, derandomize=True, database=None,
                    report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example compiles
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(spec=SPEC, data=hs.data())
def test_random_models_gfi_properties(spec, data):
    model = build(spec)
    x = 0.3
    # the top-level addresses, from a trace-time-only structure computation (no compilation)
    struct = jax.eval_shape(lambda k: model.simulate(k, x).choices, jax.random.key(0))
    top = sorted({path[0] for path, _ in struct.leaves()})
    chosen = data.draw(hs.lists(hs.sampled_from(top), unique=True, max_size=len(top)), label="constrained")
    sub_sel = select(*chosen) if chosen else ppl.select_none()
    no_branching = not has_cond(spec)

    @jax.jit
    def checks(k1, k2, k3):
        tr = model.simulate(k1, x)
        lp, rv = model.assess(tr.choices, x)
        gtr, gw = model.generate(k2, tr.choices, x)
        utr, uw, ud = model.update(k2, tr, ChoiceMap.empty(), x)
        cons = tr.choices.filter(sub_sel)
        ctr, cw = model.generate(k3, cons, x)
        clp, _ = model.assess(ctr.choices, x)
        c_utr, c_uw, _ = model.update(k3, ctr, cons, x)
        out = dict(tr=tr, rv=rv, lp=lp, gtr=gtr, gw=gw, utr=utr, uw=uw, ud=ud, cons=cons, ctr=ctr,
                   cw=cw, clp=clp, c_utr=c_utr, c_uw=c_uw)
        if no_branching:
            tr2 = model.simulate(k3, x)
            _, w2, _ = model.update(k1, tr, tr2.choices, x)
            out.update(tr2=tr2, w2=w2)
        return out

    o = checks(jax.random.key(1), jax.random.key(2), jax.random.key(3))
    tr = o["tr"]
    # simulate -> assess == score (and same return value)
    close(o["lp"], tr.score)
    close(o["rv"], tr.retval)
    # generate with every choice constrained: weight == score, same choices
    close(o["gw"], tr.score)
    close(o["gtr"].score, tr.score)
    same_choices(o["gtr"].choices, tr.choices)
    # update with no change: weight 0, same trace, nothing discarded
    close(o["uw"], 0.0)
    same_choices(o["utr"].choices, tr.choices)
    close(o["utr"].score, tr.score)
    assert o["ud"].is_empty()
    # random constraints: kept in the trace, consistent score, update with them again is a no-op
    ctr = o["ctr"]
    for path, v in o["cons"].leaves():
        if isinstance(v, ppl.Masked) and not np.any(np.asarray(v.flag)):
            continue  # an untaken branch's choice (masked out): not in the concrete trace either
        got = ctr.choices.get_submap(path).raw_value()
        got = got.value if isinstance(got, ppl.Masked) else got
        want = v.value if isinstance(v, ppl.Masked) else v
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    close(o["clp"], ctr.score)
    close(o["c_uw"], 0.0)
    same_choices(o["c_utr"].choices, ctr.choices)
    if chosen == top:
        close(o["cw"], ctr.score)
    if not chosen:
        close(o["cw"], 0.0)
    if no_branching:  # same structure: update to another trace's choices = score difference
        close(o["w2"], o["tr2"].score - tr.score, tol=2e-3)
