"""``ppl.switch`` and ``ppl.cond``: stochastic branching on a sampled index or predicate.

Every branch's trace is kept (untaken ones zero-filled), so the call's choices are the union of
the branches' choices, each ``Masked`` by whether its branch was taken (see :mod:`ppl.masking`);
outside ``jit`` the taken branch's choices appear directly under the call's address.
``update``/``regenerate`` follow Gen's semantics at a change of branch (:meth:`SwitchGF._edit`).

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def heads():
    ...     return ppl.normal(1.0, 1.0) @ "a"
    >>> @ppl.gen
    ... def tails():
    ...     return ppl.normal(-1.0, 1.0) @ "b"
    >>> @ppl.gen
    ... def model():
    ...     return ppl.cond(ppl.flip(0.5) @ "c", heads, tails)() @ "branch"
    >>> tr = model.simulate(jax.random.key(0))
    >>> len([a for a, _ in tr.choices if a[0] == "branch"])
    1
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..choicemap import ChoiceMap, Masked, select, select_none
from ..core import (
    STATE,
    GenerativeFunction,
    Trace,
    current_path,
    masked_total,
    pack_args,
    raise_from_callback,
    trace_dataclass,
)
from ..errors import AddressError, ModelError, ShapeError, fmt_addr
from ..masking import discard_except, drop_absent, expand_discard, mask, merge_masked
from ._shared import LeadingArgCall, check_gfs, zeros_like_struct

__all__ = ["switch", "cond", "SwitchGF", "SwitchTrace", "concrete_index"]


@trace_dataclass
class SwitchTrace(Trace):
    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    index: Any
    subs: tuple

    def get_choices(self):
        idx = concrete_index(self.index)
        if idx is not None:
            return self.subs[idx].get_choices()
        return merge_masked([(self.index == b, s.get_choices()) for b, s in enumerate(self.subs)], current_path())

    def get_scores(self):
        idx = concrete_index(self.index)
        if idx is not None:
            return self.subs[idx].get_scores()
        return merge_masked([(self.index == b, s.get_scores()) for b, s in enumerate(self.subs)], current_path())


def _branch_switch(index, fns, *operands):
    """``lax.switch`` with ``STATE.branch_depth`` raised while the branches are traced (debug checks
    inside branches then use callbacks that ``vmap`` of ``cond`` supports)."""

    def enter(f):
        def g(*a):
            STATE.branch_depth += 1
            try:
                return f(*a)
            finally:
                STATE.branch_depth -= 1

        return g

    return jax.lax.switch(index, [enter(f) for f in fns], *operands)


def _index_callback(ok, idx, msg):
    if not bool(ok):
        raise_from_callback(ModelError(f"{msg}, got {int(idx)} (debug-mode run-time check). Pass as many "
                                       "branches as the index can take."))


def concrete_index(index):
    """The branch index as a Python int when it is concrete (not traced, not a shape struct)."""
    if not isinstance(index, (jax.Array, np.ndarray, np.generic, int)) or isinstance(index, jax.core.Tracer):
        return None
    if np.ndim(index) != 0:
        return None
    return int(index)



def _paths_selection(chm_struct: ChoiceMap):
    paths = [p for p, _ in chm_struct.leaves()]
    return select(*paths) if paths and () not in paths else (select_none() if not paths else None)


_SHAPES_CACHE: dict = {}


def _abstract_spec(gf, args):
    """A hashable description of ``args`` up to data values (None if not hashable)."""
    from ..core import is_data

    leaves, treedef = jax.tree_util.tree_flatten(args)
    try:
        spec = (gf, treedef, tuple((jnp.shape(x), jnp.result_type(x), isinstance(x, float)) if is_data(x) else x
                                   for x in leaves))
        hash(spec)
    except TypeError:
        return None
    return spec


@dataclasses.dataclass(frozen=True, eq=True)
class SwitchGF(GenerativeFunction):
    """Stochastic branching: called with ``(index, *args)``; see :func:`switch` and :func:`cond`."""

    branches: tuple

    @property
    def name(self):
        return "switch(" + ", ".join(b.name for b in self.branches) + ")"

    def _index(self, index):
        idx = jnp.asarray(index)
        if idx.dtype == jnp.bool_:
            raise ModelError("internal: boolean index reached SwitchGF")
        if not jnp.issubdtype(idx.dtype, jnp.integer) or idx.shape != ():
            raise ShapeError(
                f"{self.name} at {fmt_addr(current_path())}: the branch index must be an integer "
                f"scalar, got {idx.dtype}{list(idx.shape)}"
            )
        n = len(self.branches)
        msg = (f"{self.name} at {fmt_addr(current_path())}: branch index out of range: there are {n} "
               f"branches (valid indices 0..{n - 1})")
        c = concrete_index(index)
        if c is not None:
            if not 0 <= c < n:
                raise ModelError(f"{msg}, got {c}. Pass as many branches as the index can take.")
            return idx.astype(jnp.int32), None
        in_range = jnp.logical_and(idx >= 0, idx < n)
        if STATE.debug:
            jax.debug.callback(_index_callback, in_range, idx, msg)
        # Out of range (possible only for traced indices): the trace is impossible (score -inf).
        return jnp.clip(idx.astype(jnp.int32), 0, n - 1), in_range

    def _shapes(self, args):
        """Per branch: (stripped trace struct, retval struct, choice-map struct).

        The choice-map struct is computed while tracing (flags of nested branches are tracers), so
        it lists every address a branch may visit; leaves that are conditionally present (nested
        branches) are ``Masked``.
        """
        spec = _abstract_spec(self, args)
        if spec is not None and spec in _SHAPES_CACHE:
            return _SHAPES_CACHE[spec]
        out = []
        for b in self.branches:

            def f(k, a, b=b):
                tr = b.simulate(k, *a)
                return tr.strip(), tr.retval, tr.get_choices()

            out.append(jax.eval_shape(f, jax.random.key(0), args))
        rvs = [jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), r) for _, r, _ in out]
        if any(r != rvs[0] for r in rvs[1:]):
            raise ShapeError(
                f"{self.name} at {fmt_addr(current_path())}: branches return different shapes "
                f"{rvs}; every branch must return values of the same structure, shape and dtype."
            )
        if spec is not None:
            if len(_SHAPES_CACHE) > 4096:
                _SHAPES_CACHE.clear()
            _SHAPES_CACHE[spec] = out
        return out

    def _route(self, constraints, shapes, what):
        """Split constraints per branch by the addresses each branch visits."""
        parts, covered = [], set()
        for _, _, struct in shapes:
            sel = _paths_selection(struct)
            part = constraints.filter(sel) if sel is not None else constraints
            parts.append(part)
            covered |= {p for p, _ in part.leaves()}
        for p, _ in constraints.leaves():
            if p not in covered:
                raise AddressError(
                    f"{what}: address {fmt_addr(current_path() + p)} is in the constraints but no "
                    f"branch of {self.name} visits it; remove it or fix the spelling."
                )
        return parts

    def _all_subs(self, b, sub_b, shapes):
        return tuple(sub_b if c == b else zeros_like_struct(shapes[c][0]) for c in range(len(self.branches)))

    def _simulate(self, key, index, *args):
        idx, in_range = self._index(index)
        shapes = self._shapes(args)

        def fn(b):
            def f(key, args):
                tr = self.branches[b].simulate(key, *args)
                return self._all_subs(b, tr.strip(), shapes), tr.retval, tr.score

            return f

        subs, rv, score = _branch_switch(idx, [fn(b) for b in range(len(self.branches))], key, args)
        return SwitchTrace(self, pack_args((index, *args)), rv, _guard(score, in_range), idx, subs)

    def _assess(self, choices, index, *args):
        idx, in_range = self._index(index)
        shapes = self._shapes(args)
        parts = self._route(choices, shapes, f"{self.name}.assess")
        cidx = concrete_index(idx)

        def fn(b):
            _, rv_s, struct = shapes[b]
            # unconditionally visited addresses (masked ones belong to nested branches)
            needed = {p for p, v in struct.leaves() if not isinstance(v, Masked)}
            have = {p for p, _ in parts[b].leaves()}
            missing = sorted(needed - have)

            def f(choices):
                if missing:
                    return jnp.array(-jnp.inf), zeros_like_struct(rv_s)
                lp, rv = self.branches[b].assess(choices, *args)
                return jnp.asarray(lp, jnp.float32), rv

            if missing and cidx == b:
                raise AddressError(
                    f"{self.name}.assess: branch {b} is taken but has no value at "
                    f"{fmt_addr(current_path() + missing[0])}; assess needs every choice."
                )
            return f

        lp, rv = _branch_switch(idx, [lambda ps, b=b: fn(b)(ps[b]) for b in range(len(self.branches))], parts)
        return _guard(lp, in_range), rv

    def _generate(self, key, constraints, index, *args):
        idx, in_range = self._index(index)
        shapes = self._shapes(args)
        parts = self._route(constraints, shapes, f"{self.name}.generate")

        def fn(b):
            def f(key, parts):
                tr, w = self.branches[b].generate(key, parts[b], *args)
                return self._all_subs(b, tr.strip(), shapes), tr.retval, tr.score, jnp.asarray(w, jnp.float32)

            return f

        subs, rv, score, w = _branch_switch(idx, [fn(b) for b in range(len(self.branches))], key, parts)
        score, w = _guard(score, in_range), _guard(w, in_range)
        return SwitchTrace(self, pack_args((index, *args)), rv, score, idx, subs), w

    def _edit(self, key, trace, arg, index, args, mode):
        """``update``/``regenerate`` with Gen's semantics at branch switches.

        When the new index ``b`` differs from the old one ``c``, branch ``b`` is generated with the
        old choices at the addresses both branches visit (same shape and dtype, visited
        unconditionally by ``b``) as constraints, unless they are constrained anew (``update``) or
        selected (``regenerate``). ``update``'s weight is ``generate``'s weight minus the old
        branch's score (``log p(t') - log p(t) - log q(fresh)``); ``regenerate``'s is ``generate``'s
        weight minus the old scores of the carried choices (removed and resampled choices cancel
        against the prior proposal). One program per pair ``(b, c)``.
        """
        if not isinstance(trace, SwitchTrace):
            raise ModelError(f"{self.name} at {fmt_addr(current_path())}: expected a switch trace")
        new, in_range = self._index(index)
        old = trace.index
        shapes = self._shapes(args)
        n_b = len(self.branches)
        update = mode == "update"
        parts = self._route(arg, shapes, f"{self.name}.{mode}") if update else None
        old_choices = [trace.subs[c].get_choices() for c in range(n_b)]
        old_scores = [trace.subs[c].get_scores() for c in range(n_b)]
        specs = [{p: (tuple(v.shape), jnp.dtype(v.dtype)) for p, v in struct.leaves() if not isinstance(v, Masked)}
                 for _, _, struct in shapes]
        constrained = [{p for p, _ in parts[b].leaves()} if update else set() for b in range(n_b)]

        def kept(b, c):
            """Addresses of old branch ``c`` whose values branch ``b`` keeps."""
            out = set()
            for p, v in old_choices[c].leaves():
                val = v.value if isinstance(v, Masked) else v
                if specs[b].get(p) != (tuple(jnp.shape(val)), jnp.dtype(jnp.result_type(val))):
                    continue
                if p in constrained[b] or (not update and _selects(arg, p)):
                    continue
                out.add(p)
            return out

        def none(c):
            return mask(old_choices[c], jnp.array(False))

        def arm(b, c):
            branch = self.branches[b]

            def f(key, subs):
                if c == b:
                    if update:
                        tr, w, d = branch.update(key, subs[b], parts[b], *args)
                    else:
                        tr, w, d = branch.regenerate(key, subs[b], arg, *args)
                    discards = tuple(expand_discard(old_choices[b], d) if c2 == b else none(c2) for c2 in range(n_b))
                else:
                    keep = kept(b, c)
                    carried = ChoiceMap.from_leaves([(p, v) for p, v in old_choices[c].leaves() if p in keep])
                    tr, w = branch.generate(key, (parts[b] | carried) if update else carried, *args)
                    if update:
                        w = w - trace.score
                    else:
                        w = w - masked_total([(p, v) for p, v in old_scores[c].leaves() if p in keep])
                    discards = tuple(discard_except(old_choices[c], keep) if c2 == c else none(c2)
                                     for c2 in range(n_b))
                new_subs = tuple(tr.strip() if c2 == b else subs[c2] for c2 in range(n_b))
                return new_subs, tr.retval, tr.score, jnp.asarray(w, jnp.float32), discards

            return f

        def outer(b):
            def f(key, subs):
                return _branch_switch(old, [arm(b, c) for c in range(n_b)], key, subs)

            return f

        subs, rv, score, w, discards = _branch_switch(new, [outer(b) for b in range(n_b)], key, trace.subs)
        discard = merge_masked([(jnp.array(True), d) for d in discards], current_path())
        score, w = _guard(score, in_range), _guard(w, in_range)
        return SwitchTrace(self, pack_args((index, *args)), rv, score, new, subs), w, drop_absent(discard)

    def _update(self, key, trace, constraints, index, *args):
        return self._edit(key, trace, constraints, index, args, "update")

    def _regenerate(self, key, trace, selection, index, *args):
        return self._edit(key, trace, selection, index, args, "regenerate")



def _selects(selection, path) -> bool:
    return selection.has_root() if path == () else selection.contains(path)


def _guard(x, in_range):
    """``x``, or ``-inf`` where the branch index was out of range (an impossible trace)."""
    if in_range is None:
        return x
    return jnp.where(in_range, x, -jnp.inf)



class _BranchCall(LeadingArgCall):
    """``ppl.cond(pred, f, g)`` / ``ppl.switch(i, *fs)``: call with the branches' arguments."""

    @property
    def index(self):
        return self.first



def switch(index, *branches) -> _BranchCall:
    """Branch on a (sampled) integer ``index``: ``ppl.switch(i, f, g, h)(*args) @ "branch"``.

    The taken branch's choices appear directly under the call's address.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def a():
        ...     return ppl.normal(0.0, 1.0) @ "a"
        >>> @ppl.gen
        ... def b():
        ...     return ppl.normal(10.0, 1.0) @ "b"
        >>> @ppl.gen
        ... def model():
        ...     i = ppl.categorical(probs=jax.numpy.array([0.5, 0.5])) @ "i"
        ...     return ppl.switch(i, a, b)() @ "branch"
        >>> tr = model.simulate(jax.random.key(1))
        >>> len([addr for addr, _ in tr.choices if addr[0] == "branch"])
        1
    """
    check_gfs(branches, "ppl.switch")
    if len(branches) < 1:
        raise ModelError("ppl.switch needs at least one branch")
    if isinstance(index, (bool, np.bool_)):
        raise ModelError("ppl.switch takes an integer index; for a boolean use ppl.cond(pred, f, g)")
    c = concrete_index(index)
    if c is not None and not 0 <= c < len(branches):
        raise ModelError(
            f"ppl.switch at {fmt_addr(current_path())}: branch index {c} is out of range for "
            f"{len(branches)} branches (valid indices 0..{len(branches) - 1})."
        )
    return _BranchCall(SwitchGF(tuple(branches)), index)


def cond(pred, gf_true, gf_false) -> _BranchCall:
    """Branch on a (sampled) boolean: ``ppl.cond(c, right, left)(*args) @ "branch"``.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def right():
        ...     return ppl.normal(1.0, 1.0) @ "a"
        >>> @ppl.gen
        ... def left():
        ...     return ppl.normal(-1.0, 1.0) @ "a"
        >>> @ppl.gen
        ... def model():
        ...     c = ppl.flip(0.5) @ "c"
        ...     return ppl.cond(c, right, left)() @ "branch"
        >>> ("branch", "a") in model.simulate(jax.random.key(0)).choices
        True
    """
    check_gfs((gf_true, gf_false), "ppl.cond")
    index = jnp.where(jnp.asarray(pred).astype(bool), 0, 1).astype(jnp.int32)
    return _BranchCall(SwitchGF((gf_true, gf_false)), index)

