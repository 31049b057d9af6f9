"""The choice-map layer's public seams: ``ChoiceMap.from_leaves`` (the one ``(path, leaf)``
builder), ``Selection.named_paths``, the masked algebra of :mod:`ppl.masking`, and the
combinators package's layout (re-exports, shared trace base, ``ScanGF.n_steps``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl import ChoiceMap, Masked, select, select_all, select_none
from ppl import masking


def _fold(items):
    """The construction ``ChoiceMap.from_leaves`` replaced in mcmc.mh(proposal): one merge per leaf."""
    out = ChoiceMap.empty()
    for p, v in items:
        out = out | ChoiceMap._nest(p, ChoiceMap.value(v))
    return out


def _same(a: ChoiceMap, b: ChoiceMap, order_too: bool = True):
    """Same leaves (bitwise, Masked wrappers included), same pytree structure and, with
    ``order_too``, the same order of sub-maps (which ``repr`` and ``child_names`` show)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
    assert [type(v) for _, v in a.leaves()] == [type(v) for _, v in b.leaves()]

    def order(c, pre=()):
        return [(pre, c.child_names())] + [o for k in c.child_names() for o in order(c.get_submap(k), pre + (k,))]

    if order_too:
        assert order(a) == order(b)
        assert repr(a) == repr(b)


def test_from_leaves_inverts_leaves_and_matches_the_merge_fold():
    chm = ChoiceMap({
        "z": 1.0,
        ("g", "b"): jnp.arange(3.0),
        ("g", "a"): Masked(jnp.ones(2), jnp.array([True, False])),
        ("h", "k", "q"): Masked(jnp.int32(4), jnp.array(False)),
        "a": jnp.int32(2),
    })
    items = chm.leaves()
    assert [p for p, _ in items] == sorted(p for p, _ in items)
    built = ChoiceMap.from_leaves(items)
    _same(built, chm, order_too=False)  # chm's sub-maps are in dict order, built's in leaves() order
    _same(built, _fold(items))
    # a subset in leaves() order (what mh(proposal) passes), and in reverse order
    sub = [(p, v) for p, v in items if p[0] != "g"]
    _same(ChoiceMap.from_leaves(sub), _fold(sub))
    _same(ChoiceMap.from_leaves(sub[::-1]), _fold(sub[::-1]))
    # masked leaves stay masked even where concretely absent (the structure is static)
    leaf = dict(built.leaves())[("h", "k", "q")]
    assert isinstance(leaf, Masked) and not bool(leaf.flag)
    assert ("h", "k", "q") not in built


def test_from_leaves_root_value_and_empty():
    assert ChoiceMap.from_leaves([]).is_empty()
    _same(ChoiceMap.from_leaves([((), 2.5)]), ChoiceMap.value(2.5))
    assert float(ChoiceMap.from_leaves([((), 2.5)])[()]) == 2.5


@pytest.mark.parametrize("items, bad", [
    ([(("a",), 1.0), (("a",), 2.0)], ("a",)),
    ([(("a",), 1.0), (("a", "b"), 2.0)], ("a",)),
    ([(("a", "b"), 2.0), (("a",), 1.0)], ("a",)),
    ([(("g", "x"), 1.0), (("g", "x", "y"), 2.0)], ("g", "x")),
])
def test_from_leaves_conflicts_name_the_address(items, bad):
    with pytest.raises(ppl.AddressError) as e:
        ChoiceMap.from_leaves(items)
    assert e.value.path == bad
    assert ppl.errors.fmt_addr(bad) in str(e.value)


def test_inference_jacobian_uses_the_same_builder():
    from inference import _jacobian

    assert _jacobian.from_leaves is ChoiceMap.from_leaves


def test_without():
    chm = ChoiceMap({"component": 1, ("x", "y"): 2.0, "z": 3.0})
    assert chm.without("component").addresses() == [("x", "y"), "z"]
    assert chm.without("absent") == chm
    assert "component" in chm  # unchanged


def test_named_paths():
    s = select("b", ("g", "x")) | (select("a") | select("b"))
    assert s.named_paths() == [("a",), ("b",), ("g", "x")]
    assert (select("a") & select("b")).named_paths() == []
    assert (select("a") & select("b")).named_paths(all_operators=True) == [("a",), ("b",)]
    assert (~select("x") | select("y")).named_paths() == [("y",)]
    assert (~select("x") | select("y")).named_paths(all_operators=True) == [("x",), ("y",)]
    assert select_all().named_paths() == [] and select_none().named_paths() == []
    # the selection's child (as used by regenerate) keeps naming the rest of the path
    assert s.child("g").named_paths() == [("x",)]


def test_selection_module_is_reexported_by_choicemap():
    from ppl import choicemap, selection

    for name in ("Selection", "select", "select_all", "select_none", "normalize_addr"):
        assert getattr(choicemap, name) is getattr(selection, name)
    assert ppl.Selection is selection.Selection


def test_mask_and_merge_masked_traced_flags():
    a = ChoiceMap({"x": jnp.array([1.0, 2.0]), "only_a": 5.0})
    b = ChoiceMap({"x": jnp.array([3.0, 4.0])})

    @jax.jit
    def merged(i):
        return masking.merge_masked([(i == 0, a), (i == 1, b)])

    for i, want in [(0, [1.0, 2.0]), (1, [3.0, 4.0])]:
        m = merged(jnp.int32(i))
        x = dict(m.leaves())[("x",)]
        assert isinstance(x, Masked) and bool(x.flag)
        assert x.value.tolist() == want
        assert ("only_a" in m) == (i == 0)
    m = masking.mask(ChoiceMap({"v": Masked(jnp.zeros((2, 3)), jnp.array([True, False]))}), jnp.array(False))
    assert dict(m.leaves())[("v",)].flag.tolist() == [False, False]


def test_merge_masked_errors_name_the_prefixed_address():
    c = jnp.array(True)
    with pytest.raises(ppl.ModelError, match="'m' / 'a' holds values of different shapes"):
        masking.merge_masked([(c, ChoiceMap({"a": 1.0})), (~c, ChoiceMap({"a": jnp.zeros(2)}))], ("m",))
    with pytest.raises(ppl.ModelError, match="'m' / 'a' is a distribution site in one branch") as e:
        masking.merge_masked([(c, ChoiceMap({"a": 1.0})), (~c, ChoiceMap({("a", "b"): 1.0}))], ("m",))
    assert not isinstance(e.value, ppl.AddressError)  # as before the move


def test_drop_expand_discard_except():
    old = ChoiceMap({"a": 1.0, "b": Masked(jnp.array([2.0, 3.0]), jnp.array([True, False])), "c": 4.0})
    e = masking.expand_discard(old, ChoiceMap({"c": 9.0}))
    got = {p[0]: (np.asarray(v.value).tolist(), np.asarray(v.flag).tolist()) for p, v in e.leaves()}
    assert got == {"a": (1.0, False), "b": ([2.0, 3.0], [False, False]), "c": (9.0, True)}
    assert masking.drop_absent(e).addresses() == ["c"]
    d = masking.discard_except(old, {("a",)})
    got = {p[0]: np.asarray(v.flag).tolist() for p, v in d.leaves()}
    assert got == {"a": False, "b": [True, False], "c": True}
    assert masking.drop_absent(d).addresses() == ["b", "c"]


def test_combinators_package_layout():
    import importlib

    from ppl import combinators
    from ppl.combinators import _shared

    # the submodules share their names with the functions they define: the package attribute is
    # the function (as before the split), the module is reached through importlib
    vmap, scan, switch, mix = (importlib.import_module(f"ppl.combinators.{m}") for m in ("vmap", "scan", "switch", "mix"))
    assert combinators.vmap is vmap.vmap and callable(combinators.scan) and combinators.mix is mix.mix

    names = ["vmap", "repeat", "scan", "cond", "switch", "mix", "VmapGF", "ScanGF", "SwitchGF", "MixGF",
             "VmapTrace", "ScanTrace", "SwitchTrace", "MixTrace", "concrete_index"]
    for name in names:
        assert hasattr(combinators, name), name
    assert combinators.VmapTrace is vmap.VmapTrace and combinators.ScanTrace is scan.ScanTrace
    assert issubclass(combinators.VmapTrace, _shared.StackedTrace)
    assert issubclass(combinators.ScanTrace, _shared.StackedTrace)
    assert combinators.VmapTrace is not combinators.ScanTrace
    assert combinators.SwitchGF is switch.SwitchGF and combinators.MixGF is mix.MixGF
    for mod in (vmap, scan, switch, mix, _shared):
        assert len(open(mod.__file__).read().splitlines()) < 500, mod.__name__


def test_stacked_traces_keep_their_kind():
    @ppl.gen
    def step(c, x):
        y = ppl.normal(c + x, 1.0) @ "y"
        return c, y

    # abstractly (nothing compiled): the trace types and structures are what is checked
    tr = jax.eval_shape(lambda k: ppl.scan(step).simulate(k, 0.0, jnp.zeros(4)), jax.random.key(0))
    tv = jax.eval_shape(lambda k: ppl.repeat(ppl.normal, 3).simulate(k, 0.0, 1.0), jax.random.key(0))
    assert type(tr).__name__ == "ScanTrace" and type(tv).__name__ == "VmapTrace"
    # distinct pytree types: a scan trace and a vmap trace never share a structure
    assert jax.tree_util.tree_structure(tr) != jax.tree_util.tree_structure(tv)
    assert tr.choices["y"].shape == (4,) and tv.choices[()].shape == (3,)


def test_n_steps():
    @ppl.gen
    def step(c, x):
        return c, ppl.normal(x, 1.0) @ "y"

    assert ppl.scan(step).n_steps(jnp.zeros(6)) == 6
    assert ppl.scan(step, length=2).n_steps(None) == 2
    assert ppl.scan(step).n_steps({"a": jnp.zeros((5, 2))}) == 5
    with pytest.raises(ppl.ShapeError, match="length=3"):
        ppl.scan(step, length=3).n_steps(jnp.zeros(4))
    with pytest.raises(ppl.ModelError, match="give length="):
        ppl.scan(step).n_steps(None)


def test_pending_calls_share_one_base():
    from ppl.combinators._shared import LeadingArgCall

    @ppl.gen
    def f():
        return ppl.normal(0.0, 1.0) @ "x"

    sw = ppl.switch(jnp.int32(0), f, f)
    mx = ppl.mix(jnp.zeros(2), f, f)
    assert isinstance(sw, LeadingArgCall) and isinstance(mx, LeadingArgCall)
    assert int(sw.index) == 0 and mx.logits.shape == (2,)
    inv = mx()
    assert inv.gf is mx.gf and inv.args[0] is mx.logits
