"""ChoiceMap, Selection and Trace: the operations of DESIGN.md and readable printing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl import ChoiceMap, Masked, select, select_all, select_none


def chm():
    return ChoiceMap({"slope": 0.3, ("group", "theta"): jnp.arange(3.0), ("group", "tau"): 1.5})


def test_construction_and_indexing():
    c = chm()
    assert float(c["slope"]) == pytest.approx(0.3)
    np.testing.assert_array_equal(np.asarray(c["group", "theta"]), [0.0, 1.0, 2.0])
    sub = c["group"]
    assert isinstance(sub, ChoiceMap) and float(sub["tau"]) == 1.5
    assert c.get_submap("group") == sub
    assert ChoiceMap({"group": {"tau": 1.5}})["group", "tau"] == 1.5
    with pytest.raises(ppl.AddressError, match="'nope'"):
        c["nope"]
    with pytest.raises(ppl.AddressError, match="'group' / 'x'"):
        c["group", "x"]


def test_contains():
    c = chm()
    assert "slope" in c and ("group", "theta") in c and "group" in c
    assert "noise" not in c and ("group", "zzz") not in c and ("slope", "x") not in c


def test_merge_and_overlap_error():
    a = ChoiceMap({"a": 1.0, ("g", "x"): 2.0})
    b = ChoiceMap({"b": 3.0, ("g", "y"): 4.0})
    m = a | b
    assert sorted(m.addresses(), key=str) == sorted(["a", "b", ("g", "x"), ("g", "y")], key=str)
    with pytest.raises(ppl.AddressError, match="'g' / 'x'"):
        a | ChoiceMap({("g", "x"): 5.0})
    with pytest.raises(ppl.AddressError, match="'g'"):
        a | ChoiceMap({"g": 5.0})
    assert float(a.set(("g", "x"), 9.0)["g", "x"]) == 9.0


def test_filter_and_complement():
    c = chm()
    assert c.filter(select("slope")).addresses() == ["slope"]
    assert sorted(c.filter(select("group")).addresses()) == [("group", "tau"), ("group", "theta")]
    assert c.filter(select(("group", "tau"))).addresses() == [("group", "tau")]
    assert sorted(c.filter(~select("group")).addresses()) == ["slope"]
    assert sorted(c.filter(~select(("group", "tau"))).addresses(), key=str) == sorted(
        [("group", "theta"), "slope"], key=str)
    assert len(c.filter(select_all())) == 3
    assert c.filter(select_none()).is_empty()
    assert len(c.filter(select("slope") | select(("group", "theta")))) == 2
    assert c.filter(select("group") & select(("group", "tau"))).addresses() == [("group", "tau")]


def test_iteration_len_and_dict():
    c = chm()
    items = list(c)
    assert [a for a, _ in items] == [("group", "tau"), ("group", "theta"), "slope"]
    assert len(c) == 3
    assert set(c.to_dict()) == {"slope", ("group", "theta"), ("group", "tau")}
    assert ChoiceMap.empty().is_empty() and len(ChoiceMap.empty()) == 0


def test_selection_ops():
    s = select("slope", ("group", "theta"))
    assert s.contains("slope") and s("slope")
    assert s.contains(("group", "theta", "deeper"))  # prefixes select subtrees
    assert not s.contains("group") and not s.contains(("group", "tau"))
    assert (~s).contains("noise") and not (~s).contains("slope")
    u = select("a") | select("b")
    assert u.contains("a") and u.contains("b") and not u.contains("c")
    assert select_all().contains(("x", "y")) and not select_none().contains("x")
    assert repr(s) == "select(('group', 'theta'), 'slope')"
    assert repr(~select("a")) == "~select('a')"
    with pytest.raises(ppl.AddressError):
        select(3)


def test_choicemap_is_a_pytree():
    c = chm()
    leaves, treedef = jax.tree_util.tree_flatten(c)
    assert len(leaves) == 3
    doubled = jax.tree_util.tree_map(lambda x: x * 2, c)
    assert float(doubled["slope"]) == pytest.approx(0.6)
    out = jax.jit(lambda m: m["group", "theta"].sum())(c)
    assert float(out) == 3.0
    batched = jax.vmap(lambda x: ChoiceMap({"a": x}))(jnp.arange(4.0))
    assert batched["a"].shape == (4,)


def test_masked_choices():
    c = ChoiceMap({"y": Masked(jnp.array([1.0, 2.0]), jnp.array([True, False])), "z": Masked(3.0, False)})
    assert "z" not in c and "y" in c
    assert [a for a, _ in c] == ["y"]
    with pytest.raises(ppl.AddressError, match="not present"):
        c["z"]
    assert "masked by" in repr(c)


def test_choicemap_printing():
    text = repr(chm())
    assert text.splitlines()[0] == "ChoiceMap"
    assert "└── group" in text and "├── theta: [0., 1., 2.]  [float32[3]]" in text
    assert "slope: 0.3" in text
    assert repr(ChoiceMap.empty()) == "ChoiceMap(empty)"
    big = repr(ChoiceMap({"x": jnp.zeros((100, 3))}))
    assert "float32[100, 3]" in big and len(big) < 80


def test_trace_printing():
    @ppl.gen
    def inner():
        return ppl.normal(0.0, 1.0) @ "theta"

    @ppl.gen
    def model():
        ppl.normal(0.0, 1.0) @ "mu"
        return inner() @ "group"

    tr = model.simulate(jax.random.key(0))
    text = repr(tr)
    first = text.splitlines()[0]
    assert first.startswith("Trace of model (score=") and f"{float(tr.score):.4f}" in first
    assert "├── group" in text and "└── theta:" in text and "mu:" in text and "[float32]" in text
    batched = jax.vmap(lambda k: model.simulate(k))(jax.random.split(jax.random.key(0), 5))
    assert "score=float32[5]" in repr(batched)
    assert "[float32[5]]" in repr(batched)


def test_trace_accessors():
    @ppl.gen
    def model(x):
        return ppl.normal(x, 1.0) @ "y"

    tr = model.simulate(jax.random.key(0), 2.0)
    assert float(tr.args[0]) == 2.0
    assert float(tr.retval) == float(tr.choices["y"])
    assert tr.get_subtrace("y").choices[()] == tr.choices["y"]
    with pytest.raises(ppl.AddressError, match="'nope'"):
        tr.get_subtrace("nope")
