"""The algebra of masked choice maps: combining the choices of alternatives (branches).

A stochastic branch (``ppl.cond``/``ppl.switch``/``ppl.mix``) under ``jit`` cannot know which
branch was taken, so its choice map holds every branch's choices, each leaf a
:class:`ppl.Masked` value present where its branch was taken. These functions build and take
apart such maps; they are part of the choice-map layer (with :mod:`ppl.choicemap` and
:mod:`ppl.selection`) and know nothing of generative functions. A flag is a boolean array whose
shape is a prefix of its value's shape (one flag per leading index), broadcast on the right.

- :func:`broadcast_flag`: a flag reshaped to broadcast against a value (trailing unit axes);
- :func:`mask`: every leaf of a map present only where a flag holds;
- :func:`merge_masked`: the union of alternative maps, each present where its flag holds;
- :func:`drop_absent`: a map without its leaves that are concretely absent;
- :func:`expand_discard`: a discard given the leaf structure of the map it was taken from;
- :func:`discard_except`: a whole map as a discard, except the leaves that are kept.

Example (two branches visiting ``"x"``, one also ``"y"``; branch 0 taken):
    >>> import jax.numpy as jnp
    >>> from ppl import ChoiceMap
    >>> taken = jnp.array(0)
    >>> both = merge_masked([(taken == 0, ChoiceMap({"x": 1.0})),
    ...                      (taken == 1, ChoiceMap({"x": 2.0, "y": 3.0}))])
    >>> float(both["x"]), "y" in both
    (1.0, False)
    >>> dict(both.leaves())[("y",)]
    Masked(3., flag=False)
"""

from __future__ import annotations

import jax.numpy as jnp

from .choicemap import ChoiceMap, Masked, _map_nodes, concrete_bool, mask_and
from .errors import AddressError, ModelError, fmt_addr

__all__ = ["broadcast_flag", "mask", "merge_masked", "drop_absent", "expand_discard", "discard_except"]


def broadcast_flag(flag, like):
    """``flag`` with trailing unit axes added so that it broadcasts against ``like`` (a flag's
    shape is a prefix of its value's shape).

    Examples:
        >>> import jax.numpy as jnp
        >>> broadcast_flag(jnp.array([True, False]), jnp.zeros((2, 3))).shape
        (2, 1)
    """
    return jnp.reshape(flag, jnp.shape(flag) + (1,) * (jnp.ndim(like) - jnp.ndim(flag)))


def mask(chm: ChoiceMap, flag) -> ChoiceMap:
    """``chm`` with every leaf present only where ``flag`` holds: a plain leaf ``v`` becomes
    ``Masked(v, flag)``, a masked leaf keeps its value and its flag is and-ed with ``flag``
    (``flag`` is broadcast against the leaf's flag). The structure of ``chm`` is kept.

    Examples:
        >>> import jax.numpy as jnp
        >>> from ppl import ChoiceMap, Masked
        >>> m = mask(ChoiceMap({"x": 1.0, "y": Masked(jnp.zeros(2), jnp.array([True, False]))}), jnp.array(True))
        >>> [(p, v.flag.tolist()) for p, v in m.leaves()]
        [(('x',), True), (('y',), [True, False])]
    """

    def f(v):
        if isinstance(v, Masked):
            return Masked(v.value, mask_and(broadcast_flag(flag, v.flag), v.flag))
        return Masked(v, flag)

    return _map_nodes(chm, f)


def merge_masked(parts, prefix: tuple = ()) -> ChoiceMap:
    """The union of alternative choice maps ``[(flag, chm), ...]``, each present where its flag
    holds; the flags must be mutually exclusive (at most one alternative is taken).

    An address visited by several alternatives holds one ``Masked`` value, the taken
    alternative's value, present where any of them is taken; its values must share shape and
    dtype. A leaf whose flag is concretely all-true is stored unmasked. ``prefix`` is the address
    of the maps, used in error messages only. A value in one alternative at an address where
    another holds nested choices, or values of different shapes/dtypes at one address, raise
    :class:`ppl.ModelError` naming the address.

    Examples:
        >>> import jax.numpy as jnp
        >>> from ppl import ChoiceMap
        >>> c = jnp.array(False)
        >>> m = merge_masked([(c, ChoiceMap({"a": 1.0})), (~c, ChoiceMap({"a": 2.0, "b": 5.0}))])
        >>> float(m["a"]), float(m["b"])
        (2.0, 5.0)
        >>> merge_masked([(c, ChoiceMap({"a": 1.0})), (~c, ChoiceMap({"a": jnp.zeros(2)}))])
        Traceback (most recent call last):
        ...
        ppl.errors.ModelError: address 'a' holds values of different shapes or dtypes in different branches ...
    """
    leaves: dict = {}
    for flag, chm in parts:
        for path, v in mask(chm, flag).leaves():
            leaves.setdefault(path, []).append(v)
    merged = []
    for path, vs in leaves.items():
        if len(vs) == 1:
            v = vs[0]
        else:
            shapes = {(jnp.shape(m.value), jnp.result_type(m.value)) for m in vs}
            if len(shapes) != 1:
                raise ModelError(
                    f"address {fmt_addr(tuple(prefix) + path)} holds values of different shapes or "
                    f"dtypes in different branches ({shapes}); use distinct addresses per branch."
                )
            value, flag = vs[0].value, vs[0].flag
            for m in vs[1:]:
                value = jnp.where(broadcast_flag(m.flag, m.value), m.value, value)
                flag = jnp.logical_or(flag, m.flag)
            v = Masked(value, flag)
        if isinstance(v, Masked) and concrete_bool(v.flag) is True:
            v = v.value
        merged.append((path, v))
    try:
        return ChoiceMap.from_leaves(merged)
    except AddressError as e:
        raise ModelError(
            f"address {fmt_addr(tuple(prefix) + e.path)} is a distribution site in one branch and "
            "holds nested choices in another branch of a ppl.cond/ppl.switch/ppl.mix; give the "
            "branches' choices distinct addresses."
        ) from None


def drop_absent(chm: ChoiceMap) -> ChoiceMap:
    """``chm`` without its ``Masked`` leaves whose flag is concretely all-false (traced flags and
    partly present leaves stay).

    Examples:
        >>> from ppl import ChoiceMap, Masked
        >>> drop_absent(ChoiceMap({"a": Masked(1.0, False), "b": Masked(2.0, True), "c": 3.0})).addresses()
        ['b', 'c']
    """
    return ChoiceMap.from_leaves([(p, v) for p, v in chm.leaves()
                                  if not (isinstance(v, Masked) and concrete_bool(v.flag) is False)])


def expand_discard(old: ChoiceMap, discard: ChoiceMap) -> ChoiceMap:
    """``discard`` (the discard of an edit of a trace whose choices were ``old``) given the leaf
    structure of ``old``: every leaf of ``old`` appears, ``Masked`` with the discard's value where
    the discard has one (present), else with ``old``'s value and an all-false flag (absent). Used
    to give every branch's discard one structure, so that ``lax.switch`` can select among them.

    Examples:
        >>> from ppl import ChoiceMap
        >>> d = expand_discard(ChoiceMap({"a": 1.0, "b": 2.0}), ChoiceMap({"b": 7.0}))
        >>> [(p[0], float(v.value), bool(v.flag)) for p, v in d.leaves()]
        [('a', 1.0, False), ('b', 7.0, True)]
    """
    dl = dict(discard.leaves())
    out = []
    for path, v in old.leaves():
        if path in dl:
            dv = dl[path]
            m = dv if isinstance(dv, Masked) else Masked(dv, jnp.array(True))
        else:
            base = v.value if isinstance(v, Masked) else v
            m = Masked(base, jnp.zeros(jnp.shape(v.flag) if isinstance(v, Masked) else (), bool))
        out.append((path, m))
    return ChoiceMap.from_leaves(out)


def discard_except(old: ChoiceMap, keep) -> ChoiceMap:
    """All of ``old`` as a discard except the leaves at the paths in ``keep`` (carried over to the
    new trace): every leaf becomes ``Masked``, present where it was present and its path is not in
    ``keep``.

    Examples:
        >>> from ppl import ChoiceMap
        >>> d = discard_except(ChoiceMap({"a": 1.0, "b": 2.0}), {("a",)})
        >>> [(p[0], bool(v.flag)) for p, v in d.leaves()]
        [('a', False), ('b', True)]
    """
    out = []
    for path, v in old.leaves():
        base, flag = (v.value, v.flag) if isinstance(v, Masked) else (v, None)
        present = jnp.array(path not in keep)
        out.append((path, Masked(base, present if flag is None else jnp.logical_and(flag, present))))
    return ChoiceMap.from_leaves(out)
