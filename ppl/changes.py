"""Change propagation for ``update`` and ``regenerate`` of ``@gen`` functions.

Gen's ``update`` only needs to revisit what changed: a distribution site that keeps its value and
whose parameters do not depend on anything that changed keeps its old log density, and it adds
exactly 0 to the weight. Recomputing it anyway is correct but costs run time and, for models with
many sites, compile time (the update of one site of a chain of 1,000 compiled every site's
density). This module finds, once per (model, argument structure, trace structure), which values
each site's arguments depend on, by tracing the body once into a jaxpr in which every site is one
``ppl_site`` equation (its operands: the site's arguments and its value; its result: the value), and
following the dataflow of that jaxpr. Each ``update``/``regenerate`` then decides at trace time,
from its static constraint addresses or selection, which sites it keeps.

What counts as changed: a model argument that is not the same object (the same traced value) as
the old trace's argument (and any static argument: with other static arguments, or for a nested
trace called with static arguments whose old values are unknown, every site is revisited); a constrained (``update``) or selected (``regenerate``) address; an
address the old trace does not have; a nested generative function call whose arguments changed or
that has constrained or selected addresses under it. Anything computed from a changed value
inside a nested jaxpr (``jax.jit``, ``lax.cond``, ...) is changed as a whole (an over-approximation,
never an under-approximation). Change propagation is off in debug mode (which re-runs the checks
of every site), while interceptors run (they may rewrite any site) unless every active one keeps
the values of the sites it handles (``Interceptor.keeps_values``: then the sites it handles are
visited, but their given values are not changes), and whenever the analysis fails (then every site
is revisited, as before).

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def chain():
    ...     a = ppl.normal(0.0, 1.0) @ "a"
    ...     b = ppl.normal(a, 1.0) @ "b"
    ...     return ppl.normal(b, 1.0) @ "c"
    >>> tr = chain.simulate(jax.random.key(0))
    >>> plan = site_plan(chain, (), tr, "update", ppl.ChoiceMap({"a": 0.5}))
    >>> sorted(plan.kept)  # "b" reads "a" and is rescored; "c" reads only "b", kept as it was
    ['c']
"""

from __future__ import annotations

import dataclasses
import threading

import jax
import jax.extend.core as jex

from .core import STATE, current_path
from .lru import LRUCache

__all__ = ["SitePlan", "site_plan", "same_arg_leaves"]

# One equation per site in the dependency jaxpr: operands (site arguments..., value leaves...),
# results: the value leaves. Never executed or lowered, only traced and read.
_site_p = jex.Primitive("ppl_site")
_site_p.multiple_results = True
_site_p.def_abstract_eval(lambda *avals, addr, n_params: avals[n_params:])
_site_p.def_impl(lambda *vals, addr, n_params: vals[n_params:])


@dataclasses.dataclass(frozen=True)
class SitePlan:
    """What one ``update``/``regenerate`` execution revisits: ``kept`` distribution sites keep their
    old subtrace (value and log density, weight 0); the nested ``@gen`` ``calls`` propagate changes
    inside too (their arguments have the shapes and static values of the old execution; those in
    ``same_args`` also the same values); ``addresses`` are all the sites the body visits (so the
    site keys need no discovery trace of their own)."""

    kept: frozenset = frozenset()
    same_args: frozenset = frozenset()
    calls: frozenset = frozenset()  # the nested @gen calls (old subtrace present) to edit with a plan
    addresses: tuple | None = None  # the body's top-level addresses in visiting order, if known
    #: distribution sites given to interceptors that keep their values, with parameters that
    #: depend on nothing changed: visited (for the interceptors) with their old log densities
    same_params: frozenset = frozenset()


NO_PLAN = SitePlan()


class _Deps:
    """The dependency structure of one body: per site in visiting order, ``(addr, kind, mask)``
    where ``mask`` has bit ``j`` for model-argument leaf ``j`` and bit ``n_args + i`` for the value
    of the ``i``-th site."""

    __slots__ = ("n_args", "sites")

    def __init__(self, n_args, sites):
        self.n_args = n_args
        self.sites = sites


_DIST, _GEN, _OTHER = 0, 1, 2  # site kinds: distribution, @gen call, other generative function
_DEPS = LRUCache(1024)
_FAILED = object()


class _Recording(threading.local):
    def __init__(self):
        self.sites = None  # list of (addr, is_dist) while a dependency trace runs


_REC = _Recording()


def dependency_site(addr, gf, args, old_sub):
    """A site visited by the dependency trace (called by the ``@gen`` handler in mode ``"deps"``):
    the site's value (the old one where the site keeps it, else an abstract fresh one) passed
    through one ``ppl_site`` equation whose operands are the site's traced arguments."""
    from .distributions import DistributionGF
    from .tracing import GenFn

    is_dist = isinstance(gf, DistributionGF)
    kind = _DIST if is_dist else _GEN if isinstance(gf, GenFn) else _OTHER
    if is_dist and old_sub is not None:
        value = old_sub.value
    else:
        value = gf.simulate(jax.random.key(0), *args).retval
    params = [x for x in jax.tree_util.tree_leaves(args) if isinstance(x, jax.core.Tracer)]
    leaves, treedef = jax.tree_util.tree_flatten(value)
    _REC.sites.append((addr, kind))
    out = _site_p.bind(*params, *leaves, addr=addr, n_params=len(params))
    return jax.tree_util.tree_unflatten(treedef, out)


def _dependencies(gf, args, old):
    """The (cached) :class:`_Deps` of ``gf`` for arguments like ``args`` and an old trace like
    ``old``; ``None`` if the body cannot be analysed."""
    from .arguments import data_split
    from .tracing import _Handler

    structure, data, rebuild = data_split(args)
    old_leaves, old_def = jax.tree_util.tree_flatten(old)
    try:
        spec = (gf, *structure, old_def, tuple(_aval(x) for x in old_leaves))
        hash(spec)
    except TypeError:
        return None
    found = _DEPS.get(spec)
    if found is not None:
        return None if found is _FAILED else found

    def run(dyn_vals, old_vals):
        h = _Handler(gf, "deps", old=jax.tree_util.tree_unflatten(old_def, old_vals))
        gf._execute(h, rebuild(dyn_vals))
        return []

    saved, _REC.sites = _REC.sites, []
    icpts, STATE.interceptors = STATE.interceptors, []  # the body's own dataflow, not theirs
    try:
        closed = jax.make_jaxpr(run)(data, old_leaves)
        visited = _REC.sites
    except Exception:  # the real trace reports any error with its full context
        _DEPS[spec] = _FAILED
        return None
    finally:
        _REC.sites = saved
        STATE.interceptors = icpts
    deps = _read(closed.jaxpr, len(data), visited)
    _DEPS[spec] = _FAILED if deps is None else deps
    return deps


def _aval(x):
    return (jax.numpy.shape(x), jax.numpy.result_type(x))


def _read(jaxpr, n_args, visited):
    """Follow ``jaxpr``'s dataflow from the argument leaves and the site equations."""
    mask = {v: 1 << j for j, v in enumerate(jaxpr.invars[:n_args])}
    sites = []
    for eqn in jaxpr.eqns:
        m = 0
        for v in eqn.invars:
            if not isinstance(v, jex.Literal):
                m |= mask.get(v, 0)
        if eqn.primitive is _site_p:
            n = eqn.params["n_params"]
            pm = 0
            for v in eqn.invars[:n]:
                if not isinstance(v, jex.Literal):
                    pm |= mask.get(v, 0)
            i = len(sites)
            if i >= len(visited) or visited[i][0] != eqn.params["addr"]:
                return None
            sites.append((visited[i][0], visited[i][1], pm))
            m = 1 << (n_args + i)
        if m:
            for v in eqn.outvars:
                mask[v] = m
    if len(sites) != len(visited):  # a site inside a nested jaxpr: its value's uses are unknown
        return None
    return _Deps(n_args, tuple(sites))


def _intercepted(path) -> bool:
    return any(i.handles(path) for i in STATE.interceptors)


def same_arg_leaves(args, old_packed_args):
    """Per data leaf of ``args``: is it the very same object (the same traced value) as the old
    trace's? ``None`` when the structures, static values or shapes differ, or the old trace has
    no arguments (a nested trace): then no site can be assumed unchanged."""
    from .arguments import is_data, pack_args

    if old_packed_args is None:
        return None
    new_leaves, new_def = jax.tree_util.tree_flatten(pack_args(args))
    old_leaves, old_def = jax.tree_util.tree_flatten(old_packed_args)
    if new_def != old_def or len(new_leaves) != len(old_leaves):
        return None
    if any(_aval(a) != _aval(b) for a, b in zip(new_leaves, old_leaves)):
        return None  # a site's shape may follow an argument's shape (no dataflow to see)
    return [a is b for a, b in zip(new_leaves, old_leaves) if is_data(a)]


def site_plan(gf, args, old, mode, edits, same_args=None) -> SitePlan:
    """The :class:`SitePlan` of ``gf.update(key, old, edits, *args)`` (``mode="update"``, ``edits``
    the constraints) or ``gf.regenerate(key, old, edits, *args)`` (``mode="regenerate"``, ``edits``
    the selection). ``same_args`` is given by a planned parent execution for a nested call (True:
    the arguments are unchanged; False: they may have new values, with the old shapes and static
    values); otherwise an argument is unchanged when it is the old trace's own (see
    :func:`same_arg_leaves`).

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     return ppl.normal(0.0, 1.0) @ "y"
        >>> tr = m.simulate(jax.random.key(0))
        >>> sorted(site_plan(m, (), tr, "regenerate", ppl.select("x")).kept)
        ['y']
    """
    if STATE.debug:
        return NO_PLAN
    icpts = STATE.interceptors
    if icpts and not all(getattr(i, "keeps_values", False) for i in icpts):
        return NO_PLAN
    deps = _dependencies(gf, args, old)
    if deps is None:
        return NO_PLAN
    if same_args is not None:  # a nested call of a planned execution: shapes and statics as before
        changed = 0 if same_args else (1 << deps.n_args) - 1
    else:
        same = same_arg_leaves(args, getattr(old, "packed_args", None))
        if same is None or len(same) != deps.n_args:
            return NO_PLAN  # other static arguments, shapes or structure (or unknown: a nested trace)
        changed = sum(1 << j for j, s in enumerate(same) if not s)
    update = mode == "update"
    subs = old.subtraces
    prefix = current_path() if icpts else None
    kept, same_calls, calls, same_params = set(), set(), set(), set()
    for i, (addr, kind, pm) in enumerate(deps.sites):
        is_dist = kind == _DIST
        present = addr in subs
        args_same = not (pm & changed)
        if update:
            touched = not edits.get_submap(addr).is_empty()
        else:
            child = edits.child(addr)
            touched = child.has_root() if is_dist else not child.is_static_empty()
        handled = bool(icpts) and is_dist and _intercepted(prefix + (addr,))
        if handled and update and touched and present:
            # given to an interceptor that keeps it (keeps_values): visited, so that the
            # interceptor sees it, but its value is unchanged
            if args_same:
                same_params.add(addr)
            continue
        if is_dist:
            if present and args_same and not touched and not handled:
                kept.add(addr)
            value_changed = touched or not present
        else:
            if present and kind == _GEN:
                calls.add(addr)
                if args_same:
                    same_calls.add(addr)
            value_changed = touched or not present or not args_same
        if value_changed:
            changed |= 1 << (deps.n_args + i)
    return SitePlan(frozenset(kept), frozenset(same_calls), frozenset(calls), tuple(a for a, _, _ in deps.sites),
                    frozenset(same_params))
