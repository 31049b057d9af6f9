"""Combinators: generative functions built from generative functions.

- :func:`vmap` / ``gf.repeat(n)``: independent copies; choices gain a leading axis.
- :func:`scan`: a step ``(carry, x) -> (carry, y)`` iterated with ``lax.scan``; choices are
  stacked over time.
- :func:`cond` / :func:`switch`: stochastic branching on a sampled predicate or index; the taken
  branch's choices appear directly under the call's address.
- :func:`mix`: a mixture recording the component index at ``"component"``.

Each is a full GFI implementation and they nest inside each other and inside ``@gen``.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def step(x, _):
    ...     x = ppl.normal(0.9 * x, 1.0) @ "x"
    ...     ppl.normal(x, 0.5) @ "y"
    ...     return x, x
    >>> hmm = ppl.scan(step, length=5)
    >>> tr = hmm.simulate(jax.random.key(0), 0.0, None)
    >>> tr.choices["y"].shape
    (5,)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

from . import keys
from .choicemap import ChoiceMap, Masked, concrete_bool, mask_and, select_none, _NO_VALUE
from .core import (
    STATE,
    GenerativeFunction,
    Invocation,
    Trace,
    current_path,
    masked_total,
    pack_args,
    push_path,
    raise_from_callback,
    trace_dataclass,
)
from .distributions import DistributionGF
from .errors import AddressError, CarryShapeError, ModelError, ShapeError, fmt_addr

__all__ = ["vmap", "repeat", "scan", "cond", "switch", "mix", "VmapGF", "ScanGF", "SwitchGF", "MixGF"]


# ================================================================================== helpers
def _leading_check(chm: ChoiceMap, n: int, what: str):
    for path, v in chm.leaves():
        vals = [v.value, v.flag] if isinstance(v, Masked) else [v]
        for arr in vals:
            shape = jnp.shape(arr)
            if not shape or shape[0] != n:
                raise ShapeError(
                    f"{what}: the value at {fmt_addr(current_path() + path)} has shape {tuple(shape)}, "
                    f"but this combinator has {n} copies/steps: every value under it needs a leading "
                    f"axis of size {n} (stack the per-copy values)."
                )


def _zeros_like_struct(tree):
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def _sum(x):
    return jnp.sum(x)


# ================================================================================== vmap
@trace_dataclass
class VmapTrace(Trace):
    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    inner: Any

    def get_choices(self):
        return self.inner.get_choices()

    def get_scores(self):
        return self.inner.get_scores()


@dataclasses.dataclass(frozen=True, eq=True)
class VmapGF(GenerativeFunction):
    """Independent copies of ``gf``, vectorized with ``jax.vmap`` (see :func:`vmap`)."""

    gf: Any
    in_axes: Any = 0
    n: Any = None

    @property
    def name(self):
        return f"vmap({self.gf.name})" if self.n is None else f"{self.gf.name}.repeat({self.n})"

    def _axes(self, args):
        if isinstance(self.in_axes, (tuple, list)):
            if len(self.in_axes) != len(args):
                raise ModelError(
                    f"{self.name} at {fmt_addr(current_path())}: in_axes has {len(self.in_axes)} "
                    f"entries but the call has {len(args)} arguments"
                )
            return tuple(self.in_axes)
        return (self.in_axes,) * len(args)

    def _size(self, args, axes):
        if self.n is not None:
            return self.n
        sizes = set()
        for a, ax in zip(args, axes):
            if ax is None:
                continue
            for leaf in jax.tree_util.tree_leaves(a):
                shape = jnp.shape(leaf)
                if len(shape) <= ax:
                    raise ShapeError(
                        f"{self.name} at {fmt_addr(current_path())}: an argument of shape {shape} "
                        f"has no axis {ax} to map over; set in_axes=None for unbatched arguments"
                    )
                sizes.add(shape[ax])
        if len(sizes) != 1:
            raise ShapeError(
                f"{self.name} at {fmt_addr(current_path())}: mapped arguments have sizes "
                f"{sorted(sizes)}; they must all share one size along their mapped axis "
                "(use gf.repeat(n) when no argument is mapped)"
            )
        return sizes.pop()

    def _prep(self, args, key=None):
        """Axes, size, per-copy keys and their in_axes (lane keys when the key is a plain key)."""
        axes = self._axes(args)
        n = self._size(args, axes)
        if key is None:
            return axes, n, None, None
        key = keys.raw(key)
        if isinstance(key, keys.LaneKey):
            return axes, n, keys.split(key, n), 0
        return axes, n, keys.lanes(key, n), keys.LANE_AXES

    def _trace(self, args, tr, retval):
        return VmapTrace(self, pack_args(args), retval, _sum(tr.score), tr.strip())

    def _simulate(self, key, *args):
        axes, n, ks, kax = self._prep(args, key)
        tr, rv = jax.vmap(lambda k, *a: _with_retval(self.gf.simulate(k, *a)), in_axes=(kax, *axes))(ks, *args)
        return self._trace(args, tr, rv)

    def _assess(self, choices, *args):
        axes, n, _, _ = self._prep(args)
        _leading_check(choices, n, f"{self.name}.assess")
        lp, rv = jax.vmap(self.gf.assess, in_axes=(0, *axes))(choices, *args)
        return _sum(lp), rv

    def _generate(self, key, constraints, *args):
        axes, n, ks, kax = self._prep(args, key)
        _leading_check(constraints, n, f"{self.name}.generate")

        def one(k, c, *a):
            tr, w = self.gf.generate(k, c, *a)
            return tr.strip(), tr.retval, w

        tr, rv, w = jax.vmap(one, in_axes=(kax, 0, *axes))(ks, constraints, *args)
        return VmapTrace(self, pack_args(args), rv, _sum(tr.score), tr), _sum(w)

    def _edit(self, fn, key, trace, arg, args):
        axes, n, ks, kax = self._prep(args, key)

        def one(k, t, c, *a):
            tr, w, d = fn(k, t, c, *a)
            return tr.strip(), tr.retval, w, d

        arg_axis = 0 if isinstance(arg, ChoiceMap) else None
        tr, rv, w, d = jax.vmap(one, in_axes=(kax, 0, arg_axis, *axes))(ks, trace.inner, arg, *args)
        return VmapTrace(self, pack_args(args), rv, _sum(tr.score), tr), _sum(w), d

    def _update(self, key, trace, constraints, *args):
        _leading_check(constraints, self._prep(args)[1], f"{self.name}.update")
        return self._edit(self.gf.update, key, trace, constraints, args)

    def _regenerate(self, key, trace, selection, *args):
        return self._edit(lambda k, t, _, *a: self.gf.regenerate(k, t, selection, *a), key, trace, None, args)


def _with_retval(tr):
    return tr.strip(), tr.retval


def vmap(gf: GenerativeFunction, in_axes=0) -> VmapGF:
    """Vectorize ``gf`` over its arguments: choices and return values gain a leading axis.

    ``in_axes`` is an int/None for every argument or a tuple with one entry per argument.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> tr = ppl.vmap(ppl.normal, in_axes=(0, None)).simulate(jax.random.key(0), jnp.zeros(3), 1.0)
        >>> tr.choices[()].shape
        (3,)
    """
    if not isinstance(gf, GenerativeFunction):
        raise TypeError(f"ppl.vmap expects a generative function, got {gf!r}")
    return VmapGF(gf, tuple(in_axes) if isinstance(in_axes, list) else in_axes)


def repeat(gf: GenerativeFunction, n: int) -> VmapGF:
    """``n`` independent copies of ``gf`` called with the same arguments.

    Example:
        >>> import jax, ppl
        >>> ppl.repeat(ppl.normal, 3).simulate(jax.random.key(0), 0.0, 1.0).choices[()].shape
        (3,)
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ModelError(f"repeat: n must be a positive Python int, got {n!r}")
    return VmapGF(gf, None, int(n))


# ================================================================================== scan
@trace_dataclass
class ScanTrace(Trace):
    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    inner: Any

    def get_choices(self):
        return self.inner.get_choices()

    def get_scores(self):
        return self.inner.get_scores()


def _strong(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


@dataclasses.dataclass(frozen=True, eq=True)
class ScanGF(GenerativeFunction):
    """A step generative function iterated over time (see :func:`scan`)."""

    step: Any
    length: Any = None

    @property
    def name(self):
        return f"scan({self.step.name})"

    def _T(self, xs):
        leaves = jax.tree_util.tree_leaves(xs)
        if self.length is not None:
            for leaf in leaves:
                if jnp.shape(leaf)[:1] != (self.length,):
                    raise ShapeError(
                        f"{self.name} at {fmt_addr(current_path())}: xs has leading size "
                        f"{jnp.shape(leaf)[:1]} but length={self.length}"
                    )
            return self.length
        if not leaves:
            raise ModelError(f"{self.name} at {fmt_addr(current_path())}: give length= when xs is None")
        return jnp.shape(leaves[0])[0]

    def _split_retval(self, retval, carry):
        if not (isinstance(retval, tuple) and len(retval) == 2):
            raise ModelError(
                f"{self.name} at {fmt_addr(current_path())}: the step must return a pair "
                f"(new_carry, y), got {type(retval).__name__}"
            )
        new_carry, y = retval
        s_in = jax.tree_util.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x).name), carry)
        s_out = jax.tree_util.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x).name), new_carry)
        if jax.tree_util.tree_structure(carry) != jax.tree_util.tree_structure(new_carry) or s_in != s_out:
            raise CarryShapeError(
                f"{self.name} at {fmt_addr(current_path())}: the step received a carry of "
                f"{s_in} but returned {s_out}; the carry must keep its structure, shape and dtype "
                "across steps (cast with .astype or pad to a fixed size)."
            )
        new_carry = jax.tree_util.tree_map(lambda a, b: jnp.asarray(b, jnp.result_type(a)), carry, new_carry)
        return new_carry, y

    def _scan(self, body, carry, xs, extra, T):
        carry = _strong(carry)
        return jax.lax.scan(body, carry, (extra, xs), length=T)

    def _step_keys(self, key, carry, xs, T):
        """Per-step keys with the step's top-level site keys precomputed for all steps at once.

        Deriving a site key inside the loop body costs one hash per site and step (run one at a
        time); here it is one vectorized hash per address, outside the loop. Bit-identical to
        deriving them inside.
        """
        from .core import address_hash
        from .tracing import GenFn

        step_keys = keys.split(key, T)
        if not isinstance(self.step, GenFn):
            return step_keys
        x_s = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), xs)
        c_s = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), _strong(carry))
        tr_s = jax.eval_shape(lambda k, c, x: self.step.simulate(k, c, x).strip(), jax.random.key(0), c_s, x_s)
        table = {a: jax.vmap(lambda k, h=address_hash(a): keys.fold_in(k, h))(step_keys) for a in tr_s.subtraces}
        return keys.KeyTable(step_keys, table)

    def _simulate(self, key, carry, xs):
        T = self._T(xs)

        def body(c, kx):
            k, x = kx
            tr = self.step.simulate(k, c, x)
            c2, y = self._split_retval(tr.retval, c)
            return c2, (tr.strip(), y)

        cT, (inner, ys) = self._scan(body, carry, xs, self._step_keys(key, carry, xs, T), T)
        return ScanTrace(self, pack_args((carry, xs)), (cT, ys), _sum(inner.score), inner)

    def _assess(self, choices, carry, xs):
        T = self._T(xs)
        _leading_check(choices, T, f"{self.name}.assess")

        def body(c, cx):
            ch, x = cx
            lp, rv = self.step.assess(ch, c, x)
            c2, y = self._split_retval(rv, c)
            return c2, (lp, y)

        cT, (lps, ys) = self._scan(body, carry, xs, choices, T)
        return _sum(lps), (cT, ys)

    def _generate(self, key, constraints, carry, xs):
        T = self._T(xs)
        _leading_check(constraints, T, f"{self.name}.generate")

        def body(c, kx):
            (k, ch), x = kx
            tr, w = self.step.generate(k, ch, c, x)
            c2, y = self._split_retval(tr.retval, c)
            return c2, (tr.strip(), y, w)

        cT, (inner, ys, ws) = self._scan(body, carry, xs, (self._step_keys(key, carry, xs, T), constraints), T)
        return ScanTrace(self, pack_args((carry, xs)), (cT, ys), _sum(inner.score), inner), _sum(ws)

    def _edit(self, fn, key, trace, arg, carry, xs):
        T = self._T(xs)
        T_old = jax.tree_util.tree_leaves(trace.inner.score)[0].shape[0]
        if T != T_old:
            raise ModelError(
                f"{self.name} at {fmt_addr(current_path())}: update/regenerate cannot change the "
                f"number of steps ({T_old} -> {T}); for sequential inference use "
                "inference.smc.particle_filter, which extends step by step."
            )
        is_chm = isinstance(arg, ChoiceMap)
        if is_chm:
            _leading_check(arg, T, f"{self.name}.update")

        def body(c, kx):
            (k, t, a), x = kx
            tr, w, d = fn(k, t, a if is_chm else None, c, x)
            c2, y = self._split_retval(tr.retval, c)
            return c2, (tr.strip(), y, w, d)

        extra = (self._step_keys(key, carry, xs, T), trace.inner, arg if is_chm else None)
        cT, (inner, ys, ws, ds) = self._scan(body, carry, xs, extra, T)
        return ScanTrace(self, pack_args((carry, xs)), (cT, ys), _sum(inner.score), inner), _sum(ws), ds

    def _update(self, key, trace, constraints, carry, xs):
        return self._edit(self.step.update, key, trace, constraints, carry, xs)

    def _regenerate(self, key, trace, selection, carry, xs):
        return self._edit(lambda k, t, _, c, x: self.step.regenerate(k, t, selection, c, x), key, trace, None, carry, xs)


def scan(step: GenerativeFunction, length: int | None = None) -> ScanGF:
    """Iterate ``step(carry, x) -> (carry, y)`` over time; called with ``(init_carry, xs)``.

    Returns ``(final_carry, ys)``; choices are stacked over time (leading axis ``T``).

    Example:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def rw(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     return x, x
        >>> (final, xs), = [ppl.scan(rw, length=4).simulate(jax.random.key(0), 0.0, None).retval]
        >>> xs.shape
        (4,)
    """
    if not isinstance(step, GenerativeFunction):
        raise TypeError(f"ppl.scan expects a generative function step, got {step!r}")
    return ScanGF(step, length)


# ================================================================================== switch
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
        return _merge_masked([(self.index == b, s.get_choices()) for b, s in enumerate(self.subs)])

    def get_scores(self):
        idx = concrete_index(self.index)
        if idx is not None:
            return self.subs[idx].get_scores()
        return _merge_masked([(self.index == b, s.get_scores()) for b, s in enumerate(self.subs)])


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


def _mask_tree(chm: ChoiceMap, flag) -> ChoiceMap:
    def f(v):
        if isinstance(v, Masked):
            return Masked(v.value, mask_and(_bcast_flag(flag, v.flag), v.flag))
        return Masked(v, flag)

    return ChoiceMap._make(
        f(chm._value) if chm._value is not _NO_VALUE else _NO_VALUE,
        {k: _mask_tree(c, flag) for k, c in chm._children.items()},
    )


def _bcast_flag(flag, like):
    return jnp.reshape(flag, jnp.shape(flag) + (1,) * (jnp.ndim(like) - jnp.ndim(flag)))


def _merge_masked(parts) -> ChoiceMap:
    """Union of choice maps, each present where its flag holds (flags are mutually exclusive)."""
    leaves: dict = {}
    for flag, chm in parts:
        for path, v in _mask_tree(chm, flag).leaves():
            leaves.setdefault(path, []).append(v)
    merged = []
    for path, vs in leaves.items():
        if len(vs) == 1:
            v = vs[0]
        else:
            shapes = {(jnp.shape(m.value), jnp.result_type(m.value)) for m in vs}
            if len(shapes) != 1:
                raise ModelError(
                    f"address {fmt_addr(current_path() + path)} holds values of different shapes or "
                    f"dtypes in different branches ({shapes}); use distinct addresses per branch."
                )
            value, flag = vs[0].value, vs[0].flag
            for m in vs[1:]:
                value = jnp.where(_bcast_flag(m.flag, m.value), m.value, value)
                flag = jnp.logical_or(flag, m.flag)
            v = Masked(value, flag)
        if isinstance(v, Masked) and concrete_bool(v.flag) is True:
            v = v.value
        merged.append((path, v))
    return _from_leaves(merged)


def _from_leaves(items) -> ChoiceMap:
    """Build a choice map from ``(path, leaf)`` pairs in one pass (linear in the number of leaves)."""
    root = [_NO_VALUE, {}]
    for path, v in items:
        node = root
        for i, part in enumerate(path):
            if node[0] is not _NO_VALUE:
                raise _conflict(path[:i])
            node = node[1].setdefault(part, [_NO_VALUE, {}])
        if node[0] is not _NO_VALUE or node[1]:
            raise _conflict(path)
        node[0] = v

    def make(node):
        return ChoiceMap._make(node[0], {k: make(c) for k, c in node[1].items()})

    return make(root)


def _conflict(path):
    return ModelError(
        f"address {fmt_addr(current_path() + tuple(path))} is a distribution site in one branch and "
        "holds nested choices in another branch of a ppl.cond/ppl.switch/ppl.mix; give the branches' "
        "choices distinct addresses."
    )


def _paths_selection(chm_struct: ChoiceMap):
    from .choicemap import select

    paths = [p for p, _ in chm_struct.leaves()]
    return select(*paths) if paths and () not in paths else (select_none() if not paths else None)


_SHAPES_CACHE: dict = {}


def _abstract_spec(gf, args):
    """A hashable description of ``args`` up to data values (None if not hashable)."""
    from .core import is_data

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
        return tuple(sub_b if c == b else _zeros_like_struct(shapes[c][0]) for c in range(len(self.branches)))

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
                    return jnp.array(-jnp.inf), _zeros_like_struct(rv_s)
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
            return _mask_tree(old_choices[c], jnp.array(False))

        def arm(b, c):
            branch = self.branches[b]

            def f(key, subs):
                if c == b:
                    if update:
                        tr, w, d = branch.update(key, subs[b], parts[b], *args)
                    else:
                        tr, w, d = branch.regenerate(key, subs[b], arg, *args)
                    discards = tuple(_expand_discard(old_choices[b], d) if c2 == b else none(c2) for c2 in range(n_b))
                else:
                    keep = kept(b, c)
                    carried = _from_leaves([(p, v) for p, v in old_choices[c].leaves() if p in keep])
                    tr, w = branch.generate(key, (parts[b] | carried) if update else carried, *args)
                    if update:
                        w = w - trace.score
                    else:
                        w = w - masked_total([(p, v) for p, v in old_scores[c].leaves() if p in keep])
                    discards = tuple(_discard_except(old_choices[c], keep) if c2 == c else none(c2)
                                     for c2 in range(n_b))
                new_subs = tuple(tr.strip() if c2 == b else subs[c2] for c2 in range(n_b))
                return new_subs, tr.retval, tr.score, jnp.asarray(w, jnp.float32), discards

            return f

        def outer(b):
            def f(key, subs):
                return _branch_switch(old, [arm(b, c) for c in range(n_b)], key, subs)

            return f

        subs, rv, score, w, discards = _branch_switch(new, [outer(b) for b in range(n_b)], key, trace.subs)
        discard = _merge_masked([(jnp.array(True), d) for d in discards])
        score, w = _guard(score, in_range), _guard(w, in_range)
        return SwitchTrace(self, pack_args((index, *args)), rv, score, new, subs), w, _drop_absent(discard)

    def _update(self, key, trace, constraints, index, *args):
        return self._edit(key, trace, constraints, index, args, "update")

    def _regenerate(self, key, trace, selection, index, *args):
        return self._edit(key, trace, selection, index, args, "regenerate")


def _expand_discard(old: ChoiceMap, d: ChoiceMap) -> ChoiceMap:
    """Give discard ``d`` the structure of ``old`` (addresses absent from ``d`` masked out)."""
    dl = dict(d.leaves())
    out = []
    for path, v in old.leaves():
        if path in dl:
            dv = dl[path]
            m = dv if isinstance(dv, Masked) else Masked(dv, jnp.array(True))
        else:
            base = v.value if isinstance(v, Masked) else v
            m = Masked(base, jnp.zeros(jnp.shape(v.flag) if isinstance(v, Masked) else (), bool))
        out.append((path, m))
    return _from_leaves(out)


def _discard_except(old: ChoiceMap, keep: set) -> ChoiceMap:
    """``old`` with every leaf present in the discard except those at ``keep`` (carried over)."""
    out = []
    for path, v in old.leaves():
        base, flag = (v.value, v.flag) if isinstance(v, Masked) else (v, None)
        present = jnp.array(path not in keep)
        out.append((path, Masked(base, present if flag is None else jnp.logical_and(flag, present))))
    return _from_leaves(out)


def _selects(selection, path) -> bool:
    return selection.has_root() if path == () else selection.contains(path)


def _guard(x, in_range):
    """``x``, or ``-inf`` where the branch index was out of range (an impossible trace)."""
    if in_range is None:
        return x
    return jnp.where(in_range, x, -jnp.inf)


def _drop_absent(chm: ChoiceMap) -> ChoiceMap:
    return _from_leaves([(p, v) for p, v in chm.leaves()
                         if not (isinstance(v, Masked) and concrete_bool(v.flag) is False)])


class _BranchCall:
    """``ppl.cond(pred, f, g)`` / ``ppl.switch(i, *fs)``: call with the branches' arguments."""

    def __init__(self, gf: SwitchGF, index):
        self.gf = gf
        self.index = index

    def __call__(self, *args):
        return Invocation(self.gf, (self.index, *args))


def _check_gfs(gfs, what):
    for g in gfs:
        if not isinstance(g, GenerativeFunction):
            raise TypeError(f"{what}: every branch must be a generative function, got {g!r}")


def switch(index, *branches) -> _BranchCall:
    """Branch on a (sampled) integer ``index``: ``ppl.switch(i, f, g, h)(*args) @ "branch"``.

    The taken branch's choices appear directly under the call's address.

    Example:
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
    _check_gfs(branches, "ppl.switch")
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

    Example:
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
    _check_gfs((gf_true, gf_false), "ppl.cond")
    index = jnp.where(jnp.asarray(pred).astype(bool), 0, 1).astype(jnp.int32)
    return _BranchCall(SwitchGF((gf_true, gf_false)), index)


# ================================================================================== mix
@trace_dataclass
class MixTrace(Trace):
    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    component: Any
    branch: Any

    def get_choices(self):
        return ChoiceMap.from_children({"component": self.component.get_choices()}) | self.branch.get_choices()

    def get_scores(self):
        return ChoiceMap.from_children({"component": self.component.get_scores()}) | self.branch.get_scores()


_categorical_logits = DistributionGF("categorical", nd.Categorical, kw_names=("logits",))


def _without(chm: ChoiceMap, name: str) -> ChoiceMap:
    return ChoiceMap._make(chm._value, {k: v for k, v in chm._children.items() if k != name})


@dataclasses.dataclass(frozen=True, eq=True)
class MixGF(GenerativeFunction):
    """A mixture of generative functions, called with ``(logits, *args)`` (see :func:`mix`)."""

    components: tuple

    @property
    def name(self):
        return "mix(" + ", ".join(c.name for c in self.components) + ")"

    @property
    def _switch(self):
        return SwitchGF(self.components)

    def _check(self, args, logits=None):
        if logits is not None:
            k = jnp.shape(logits)[-1] if jnp.ndim(logits) else None
            if jnp.ndim(logits) != 1 or k != len(self.components):
                raise ShapeError(
                    f"{self.name} at {fmt_addr(current_path())}: logits have shape "
                    f"{tuple(jnp.shape(logits))} but there are {len(self.components)} components; pass "
                    f"one logit per component (shape ({len(self.components)},))."
                )
        for _, _, struct in self._switch._shapes(args):
            if "component" in struct.child_names():
                raise AddressError(
                    f"{self.name} at {fmt_addr(current_path())}: a component uses the address "
                    "'component', which the mixture reserves for the component index; rename it."
                )

    def _simulate(self, key, logits, *args):
        self._check(args, logits)
        k1, k2 = keys.split(key)
        with push_path("component"):
            comp = _categorical_logits.simulate(k1, logits)
        br = self._switch.simulate(k2, comp.value, *args)
        return MixTrace(self, pack_args((logits, *args)), br.retval, comp.score + br.score, comp.strip(), br.strip())

    def _assess(self, choices, logits, *args):
        self._check(args, logits)
        with push_path("component"):
            lp1, idx = _categorical_logits.assess(choices.get_submap("component"), logits)
        lp2, rv = self._switch.assess(_without(choices, "component"), idx, *args)
        return lp1 + lp2, rv

    def _generate(self, key, constraints, logits, *args):
        self._check(args, logits)
        k1, k2 = keys.split(key)
        with push_path("component"):
            comp, w1 = _categorical_logits.generate(k1, constraints.get_submap("component"), logits)
        br, w2 = self._switch.generate(k2, _without(constraints, "component"), comp.value, *args)
        tr = MixTrace(self, pack_args((logits, *args)), br.retval, comp.score + br.score, comp.strip(), br.strip())
        return tr, w1 + w2

    def _edit(self, key, trace, arg, logits, args, mode):
        self._check(args, logits)
        k1, k2 = keys.split(key)
        with push_path("component"):
            if mode == "update":
                comp, w1, d1 = _categorical_logits.update(k1, trace.component, arg.get_submap("component"), logits)
            else:
                comp, w1, d1 = _categorical_logits.regenerate(k1, trace.component, arg.child("component"), logits)
        rest = _without(arg, "component") if mode == "update" else arg
        fn = self._switch.update if mode == "update" else self._switch.regenerate
        br, w2, d2 = fn(k2, trace.branch, rest, comp.value, *args)
        tr = MixTrace(self, pack_args((logits, *args)), br.retval, comp.score + br.score, comp.strip(), br.strip())
        discard = (ChoiceMap.from_children({"component": d1}) if not d1.is_empty() else ChoiceMap.empty()) | d2
        return tr, w1 + w2, discard

    def _update(self, key, trace, constraints, logits, *args):
        return self._edit(key, trace, constraints, logits, args, "update")

    def _regenerate(self, key, trace, selection, logits, *args):
        return self._edit(key, trace, selection, logits, args, "regenerate")


class _MixCall:
    def __init__(self, gf, logits):
        self.gf = gf
        self.logits = logits

    def __call__(self, *args):
        return Invocation(self.gf, (self.logits, *args))


def mix(logits, *components) -> _MixCall:
    """A mixture: ``ppl.mix(logits, f, g)(*args) @ "m"`` records the index at ``("m", "component")``.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def lo():
        ...     return ppl.normal(-2.0, 1.0) @ "x"
        >>> @ppl.gen
        ... def hi():
        ...     return ppl.normal(2.0, 1.0) @ "x"
        >>> @ppl.gen
        ... def model():
        ...     return ppl.mix(jnp.log(jnp.array([0.3, 0.7])), lo, hi)() @ "m"
        >>> ch = model.simulate(jax.random.key(0)).choices
        >>> ("m", "component") in ch and ("m", "x") in ch
        True
    """
    _check_gfs(components, "ppl.mix")
    return _MixCall(MixGF(tuple(components)), logits)
