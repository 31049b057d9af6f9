"""Internal helpers shared by the SMC modules: staging, choice-map coercion, dead-particle checks,
particle-count validation and :func:`particle_map` (vectorizing over particles without copying the
values every particle shares)."""

from __future__ import annotations

import functools
import inspect
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap
from ppl.core import as_choicemap as core_as_choicemap, pack_args, unpack_args
from ppl.errors import ModelError, NonFiniteError
from ppl.staging import debug_enabled, raise_from_callback, staged as ppl_staged

from ..sharding import active_mesh, batch_sharding

__all__ = ["AllParticlesDeadError", "ParticleCountError", "check_n_particles", "as_choicemap", "staged",
           "check_alive", "pack_args", "unpack_args", "particle_map", "LANE_FLAGS", "renamed_kwargs"]


def renamed_kwargs(where: str, **renames):
    """Decorator: keep deprecated keyword names working as aliases of their new names.

    ``renames`` maps old name -> new name. Passing an old name emits a ``DeprecationWarning``
    naming the new one and forwards the value; passing both (the new one by keyword or by
    position) raises :class:`ppl.errors.ArgumentError`. The signature and docstring are the
    wrapped function's.

    Examples:
        >>> import warnings
        >>> @renamed_kwargs("demo", scheme="resampling")
        ... def f(x, resampling="systematic"):
        ...     return resampling
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     f(1, scheme="residual"), str(w[0].message).split(";")[0]
        ('residual', "demo: the keyword 'scheme' is deprecated")
    """
    from ppl.errors import ArgumentError

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                value = kwargs.pop(old)
                given = new in kwargs
                if not given:
                    try:
                        given = new in sig.bind_partial(*args, **kwargs).arguments
                    except TypeError:
                        given = False
                if given:
                    raise ArgumentError(
                        f"{where}: got both {old}= (deprecated) and {new}=; pass only {new}=.")
                warnings.warn(f"{where}: the keyword {old!r} is deprecated; use {new}= instead "
                              f"(same meaning).", DeprecationWarning, stacklevel=2)
                kwargs[new] = value
            return fn(*args, **kwargs)

        return wrapper

    return deco


class AllParticlesDeadError(NonFiniteError):
    """Every particle had weight zero (log weight ``-inf`` or NaN); reported in debug mode."""


class ParticleCountError(ModelError, ValueError):
    """A particle (or sample) count is not a positive whole number."""


def check_n_particles(n, where: str, name: str = "n_particles") -> int:
    """``n`` as a Python int, or a :class:`ParticleCountError` naming ``name`` and ``where``.

    Counts must be positive whole numbers known in Python (they fix array shapes); whole floats
    such as ``1e4`` are accepted.

    Examples:
        >>> check_n_particles(1e3, "importance.sample")
        1000
        >>> try:
        ...     check_n_particles(0, "importance.sample")
        ... except ParticleCountError as e:
        ...     print(str(e).split(";")[0])
        importance.sample: n_particles must be a positive integer, got 0
    """
    hint = f"pass a Python int >= 1, e.g. {name}=1000"
    if isinstance(n, jax.core.Tracer):
        raise ParticleCountError(
            f"{where}: {name} must be a Python int (it fixes array shapes), got a traced value; {hint} "
            "outside jax.jit/vmap or mark it static (static_argnames)."
        )
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (numbers.Real, np.ndarray, jax.Array)) or np.ndim(n) != 0:
        raise ParticleCountError(f"{where}: {name} must be a positive integer, got {n!r}; {hint}.")
    value = float(n)
    if not np.isfinite(value) or value != int(value) or value < 1:
        raise ParticleCountError(f"{where}: {name} must be a positive integer, got {n!r}; {hint}.")
    return int(value)


def as_choicemap(x) -> ChoiceMap:
    return core_as_choicemap(x, "observations")


def staged(static_argnames: tuple, packed_argnames: tuple = ()):
    """``jax.jit`` an SMC algorithm with :func:`ppl.staging.staged`: model arguments packed so Python
    ints/strings stay static, the debug flag and the active device mesh (``inference.sharding``)
    in the compilation key, GFI calls traced inline, run-time check failures raised as the ppl
    error. A keyword ``n_particles`` is validated first (:func:`check_n_particles`).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> run = staged(("n_particles",))(lambda key, n_particles: jax.random.normal(key, (n_particles,)))
        >>> run(jax.random.key(0), n_particles=3).shape
        (3,)
    """

    def deco(fn):
        compiled = ppl_staged(fn, static_argnames=static_argnames, packed_argnames=packed_argnames,
                              contexts=((active_mesh, batch_sharding),))

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            if "n_particles" in kw:  # every staged SMC algorithm validates its count here
                kw["n_particles"] = check_n_particles(kw["n_particles"], _public_name(fn))
            return compiled(*a, **kw)

        wrapper.jitted = compiled.jitted
        return wrapper

    return deco


_PUBLIC = {"pg": "particle_gibbs", "fisher": "fisher_gradient", "msc": "score_climbing_step",
           "fit": "fit_parameters", "filter": "particle_filter"}


def _public_name(fn) -> str:
    mod = getattr(fn, "__module__", "") or ""
    short = "importance" if mod.endswith("importance") else "smc"
    name = (getattr(fn, "__name__", "") or "").strip("_")
    return f"{short}.{_PUBLIC.get(name, name)}" if name and name != "<lambda>" else short


def _raise_dead(dead, where):
    if np.any(dead):
        raise_from_callback(AllParticlesDeadError(
            f"{where}: every particle has weight zero (log weight -inf or NaN); the evidence "
            "estimate is 0. Check that the observations are possible under the model (e.g. in "
            "the support of the likelihood), use more particles, or a better proposal."
        ))


def check_alive(dead, where: str):
    """In debug mode, raise :class:`AllParticlesDeadError` at run time when ``dead`` is True."""
    if debug_enabled():
        jax.debug.callback(functools.partial(_raise_dead, where=where), dead)


def logmeanexp(x, axis=-1):
    n = jnp.shape(x)[axis]
    return jax.nn.logsumexp(x, axis=axis) - jnp.log(float(n))


# ------------------------------------------------------------------------------ particle_map
# Vectorizing a per-particle function with jax.vmap(..., out_axes=0) stores every output leaf once
# per particle, including leaves that do not depend on the particle at all (the model arguments
# and observed values in a trace): N copies of the data. particle_map traces the per-particle
# function once to a jaxpr, finds which outputs depend on the per-particle inputs, and evaluates
# the jaxpr under vmap with out_axes=None for the others, so they are stored once.

#: Per-leaf particle flags of a lane-key batch (``ppl.keys.lanes``): base shared, lane per particle.
LANE_FLAGS = (False, True)


def _inlined(eqn):
    """The closed jaxpr of a ``jit`` call (inlined, so its outputs are tracked one by one), else None."""
    from jax.extend.core import ClosedJaxpr
    from jax.extend.core.primitives import closed_call_p, jit_p

    if eqn.primitive is jit_p or eqn.primitive is closed_call_p:
        inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
        if isinstance(inner, ClosedJaxpr):
            return inner
    return None


def _walk(jaxpr, consts, ins, evaluate: bool):
    """Run ``jaxpr`` on ``ins``, a list of ``(depends, source, value)`` triples, one per input.

    ``depends``: whether the value depends on a per-particle input (constants do not);
    ``source``: the variable the value was first bound to, so that a value passed through
    inlined ``jit`` calls is recognised as the same value. ``select_n(p, x, x, ...)`` (every case
    the same value, as in ``jnp.where(accept, new, old)`` of an MCMC kernel over a shared model
    argument or observed value) *is* that value whatever the predicate, and keeps its
    dependence. Other equations depend on the particle if any input does. With ``evaluate``
    the equations are bound (like ``jax.core.eval_jaxpr``), else only the flags are computed.
    """
    from jax.extend.core import DropVar, Literal
    from jax.extend.core.primitives import select_n_p

    env = {}

    def read(v):
        return (False, None, v.val) if isinstance(v, Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = (False, v, c)
    env.update(zip(jaxpr.invars, ins))
    for eqn in jaxpr.eqns:
        args = [read(v) for v in eqn.invars]
        inner = _inlined(eqn)
        src = args[1][1] if eqn.primitive is select_n_p and len(args) >= 3 else None
        if src is not None and all(a[1] is src for a in args[2:]):
            outs = [args[1]]
        elif inner is not None:
            outs = _walk(inner.jaxpr, inner.consts, args, evaluate)
        else:
            dep = any(a[0] for a in args)
            vals = [None] * len(eqn.outvars)
            if evaluate:
                params = eqn.primitive.get_bind_params(eqn.params)
                with eqn.ctx.manager:
                    vals = eqn.primitive.bind(*[a[2] for a in args], **params)
                if not eqn.primitive.multiple_results:
                    vals = [vals]
            outs = [(dep, o, val) for o, val in zip(eqn.outvars, vals)]
        for o, out in zip(eqn.outvars, outs):
            if not isinstance(o, DropVar):
                env[o] = out
    return [read(v) for v in jaxpr.outvars]


def _leaf_flags(args, axes):
    flags = []
    for a, ax in zip(args, axes):
        n_leaves = len(jax.tree_util.tree_leaves(a))
        if isinstance(ax, bool):
            flags += [ax] * n_leaves
        else:
            ax = tuple(ax)
            if len(ax) != n_leaves:
                raise ValueError(f"particle_map: {len(ax)} flags for an argument with {n_leaves} leaves")
            flags += [bool(f) for f in ax]
    return flags


def _spec(x):
    x = jnp.asarray(x) if not isinstance(x, (jax.Array, jax.core.Tracer)) else x
    weak = getattr(jax.typeof(x), "weak_type", False)
    return jax.ShapeDtypeStruct(jnp.shape(x)[1:], x.dtype, weak_type=weak)


def particle_map(fn, n: int, args: tuple, axes: tuple, copies: tuple | None = None):
    """``jax.vmap(fn)`` over ``n`` particles that stores particle-independent outputs only once.

    ``args`` are ``fn``'s arguments; ``axes`` gives, for each argument, ``True`` (every leaf has a
    leading particle axis), ``False`` (shared by all particles) or a tuple of such flags, one per
    leaf (``LANE_FLAGS`` for lane keys, a :class:`~inference.smc.ParticleCollection`'s
    ``leaf_axes()`` for its stored traces). ``copies`` optionally gives, per argument, ``None`` or
    a tuple with one index per leaf: the first leaf of that argument holding the same shared value
    (so ``jnp.where(accept, new, old)`` between two copies of a shared value stays shared).

    Returns ``(out, flags, copies)``: output leaves that depend on a per-particle input have a
    leading particle axis, the others (computed from shared values only) have none; ``flags`` is
    the tuple of these per-leaf flags in ``tree_leaves(out)`` order and ``copies`` the index of the
    first output leaf holding the same shared value (a leaf's own index if none).

    Examples:
        >>> import jax.numpy as jnp
        >>> out, flags, copies = particle_map(lambda x, c: (x * c, c + 1.0, c), 4, (jnp.arange(4.0), jnp.ones(3)),
        ...                                   (True, False))
        >>> out[0].shape, out[1].shape, flags, copies
        ((4, 3), (3,), (True, False, False), (0, 1, 2))
    """
    args = tuple(args)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    flags = _leaf_flags(args, axes)
    src = list(range(len(leaves)))
    off = 0
    for a, cp in zip(args, copies or (None,) * len(args)):
        k = len(jax.tree_util.tree_leaves(a))
        if cp is not None:
            for i, j in enumerate(cp):
                if 0 <= j < k and not flags[off + i] and not flags[off + j]:
                    src[off + i] = off + j
        off += k
    idx = [i for i, f in enumerate(flags) if f]
    batched = [leaves[i] for i in idx]

    def per(*vals):
        ls = [leaves[j] for j in src]  # copies of one shared value: one object, one jaxpr constant
        for i, v in zip(idx, vals):
            ls[i] = v
        return fn(*jax.tree_util.tree_unflatten(treedef, ls))

    closed, out_shape = jax.make_jaxpr(per, return_shape=True)(*[_spec(x) for x in batched])
    out_tree = jax.tree_util.tree_structure(out_shape)
    jaxpr, consts = closed.jaxpr, closed.consts
    res = _walk(jaxpr, consts, [(True, v, None) for v in jaxpr.invars], False)
    dep = [d for d, _, _ in res]
    first, out_copies = {}, []
    for i, (d, v, _) in enumerate(res):
        out_copies.append(i if d or v is None else first.setdefault(id(v), i))

    def run(*vals):
        outs = _walk(jaxpr, consts, [(True, v, x) for v, x in zip(jaxpr.invars, vals)], True)
        return [jnp.asarray(x) for _, _, x in outs]

    try:
        outs = jax.vmap(run, in_axes=0, out_axes=[0 if d else None for d in dep], axis_size=n)(*batched)
    except ValueError as e:  # a batching rule mapped a value computed from shared inputs only
        if "out_axes" not in str(e):
            raise
        outs = jax.vmap(run, in_axes=0, out_axes=0, axis_size=n)(*batched)
        dep, out_copies = [True] * len(dep), list(range(len(dep)))
    return jax.tree_util.tree_unflatten(out_tree, outs), tuple(dep), tuple(out_copies)


def broadcast_shared(tree, flags, n: int):
    """Give every leaf of ``tree`` flagged ``False`` a leading particle axis of size ``n``."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [x if f else jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)) for x, f in zip(leaves, flags)]
    return jax.tree_util.tree_unflatten(treedef, leaves)
