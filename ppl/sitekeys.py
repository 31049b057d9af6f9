"""Batched site keys of ``@gen`` executions.

A site's key is ``fold_in(key, hash(address))``. Derived one site at a time, that is one hash per
site in the compiled program (each costs run time and, on CPU, noticeable XLA compile time). When
a ``@gen`` function has several sites, their addresses are discovered once per argument structure
(an abstract run of the body with stand-in site values, cached) and all site keys are derived by
one vectorized hash; the normal sites' standard noise is drawn ahead, one vectorized draw per
shape. The keys are bit-identical either way; an address missing from the table falls back to
``fold_in``.

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def two():
    ...     a = ppl.normal(0.0, 1.0) @ "a"
    ...     return ppl.gamma(2.0, 1.0) @ "b"
    >>> _discover(two, ())[0]
    ('a', 'b')
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np

from .changes import NO_PLAN
from .choicemap import Masked
from .core import STATE, pack_args
from .lru import LRUCache
from .staging import buffered_map, inline

#: The top-level addresses of each (@gen function, argument structure) seen, for the most
#: recently used 4096 (a dropped entry is rediscovered by one abstract trace when needed again).
_ADDRESS_CACHE = LRUCache(4096)


class _Discovering(threading.local):
    def __init__(self):
        self.depth = 0  # > 0 while this thread runs an abstract discovery trace
        self.normals: dict = {}  # the direct normal sites found by the running discovery trace
        self.handler_depth = 0  # the handler depth of the function being discovered
        self.zero = None  # an abstract f32 scalar of the running discovery trace (site stand-ins)


_DISCOVERING = _Discovering()


def _site_keys(gf, key, args, constraints=None, fresh=False, plan=NO_PLAN):
    """The site keys of one execution of ``gf``: a :class:`ppl.keys.KeyTable` of all its direct sites'
    keys (one vectorized hash). With ``fresh`` (simulate, generate), the normal sites that will be
    sampled (not in ``constraints``) also get their standard normal noise drawn ahead, grouped by
    shape, one vectorized draw per group (:class:`ppl.keys.Noise`): the same values as drawing each
    from its own key, in one random-number program instead of one per site."""
    from . import keys as _keys
    from .core import address_hash

    if isinstance(key, _keys.KeyTable) or _DISCOVERING.depth or STATE.interceptors:
        return key
    # update/regenerate: the plan knows the addresses, and the sites it keeps need no key
    found = _discover(gf, args) if plan.addresses is None else (plan.addresses, {})
    if found is None or len(found[0]) < 2:
        return key
    addrs, normals = found
    if plan.kept or constraints is not None:  # kept sites and given values draw nothing
        addrs = tuple(a for a in addrs if a not in plan.kept and not _given_value(constraints, a))
        if len(addrs) < 2:
            return key
    hashes = jnp.asarray([address_hash(a) for a in addrs], dtype=jnp.uint32)
    base = key.base if isinstance(key, _keys.LaneKey) else key
    derived = jax.vmap(lambda h: jax.random.fold_in(base, h))(hashes)
    if isinstance(key, _keys.LaneKey):
        return _keys.KeyTable(key, {a: _keys.LaneKey(derived[i], key.lane) for i, a in enumerate(addrs)})
    table = {a: derived[i] for i, a in enumerate(addrs)}
    if fresh:
        groups: dict = {}
        for i, a in enumerate(addrs):
            if a in normals and (constraints is None or constraints.get_submap(a).is_empty()):
                groups.setdefault(normals[a], []).append(i)
        for shape, idx in groups.items():
            if len(idx) < 2:
                continue
            # one buffer read by every site (not one copy of the vectorized draw per site)
            z = buffered_map(lambda k, shape=shape: jax.random.normal(k, shape), derived[np.asarray(idx)])
            for j, i in enumerate(idx):
                table[addrs[i]] = _keys.Noise(derived[i], z[j])
    return _keys.KeyTable(key, table)


def keyed_addresses(gf, args, constraints=None):
    """The top-level addresses of ``gf`` (a ``@gen`` function called with arguments like ``args``)
    that need a key when run with ``constraints``: every address but those given a whole value.
    ``None`` when they cannot be known ahead (then keys are derived site by site). Found by one
    abstract trace per argument structure (cached); arrays in ``args`` only give shapes.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def step(x):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     return ppl.normal(x, 0.5) @ "y"
        >>> keyed_addresses(step, (0.0,), ppl.ChoiceMap({"y": 1.0}))
        ('x',)
    """
    found = _discover(gf, args)
    if found is None:
        return None
    return tuple(a for a in found[0] if not _given_value(constraints, a))


def _given_value(constraints, addr) -> bool:
    """Whether ``constraints`` give a whole value (not a masked one) at ``addr``: a distribution
    site there draws nothing."""
    if constraints is None:
        return False
    sub = constraints.get_submap(addr)
    return sub.has_value() and not sub.child_names() and not isinstance(sub.raw_value(), Masked)


def _discovery_site(addr, gf, args):
    """A distribution site's stand-in during a discovery trace (its shape noted if it is a direct
    normal site): a value of the site's shape and dtype (abstract, not drawn) with an abstract
    score, so the body runs on to its next addresses without sampling or scoring anything
    (``None`` for other generative functions)."""
    from .distributions import DistributionGF, DistTrace, _sample_dtype

    _note_normal_site(addr, gf, args)
    zero = _DISCOVERING.zero
    if zero is None or not isinstance(gf, DistributionGF):
        return None
    d = gf.make(args)
    value = jnp.broadcast_to(zero.astype(_sample_dtype(d)), tuple(d.batch_shape) + tuple(d.event_shape))
    return DistTrace(gf, pack_args(args), value, zero)


def _note_normal_site(addr, gf, args):
    """During a discovery trace, record ``addr``'s shape if it is a direct ``normal`` site of the
    function being discovered (so that its noise can be drawn ahead, see :func:`_site_keys`)."""
    import numpyro.distributions as nd

    from .distributions import DistributionGF

    if len(STATE.handlers) != _DISCOVERING.handler_depth or not isinstance(gf, DistributionGF):
        return
    if gf.builder is not nd.Normal:
        return
    try:  # a normal's sample shape is its parameters' broadcast shape (no need to build it)
        _DISCOVERING.normals[addr] = tuple(jnp.broadcast_shapes(*(jnp.shape(a) for a in args)))
    except (ValueError, TypeError):  # not drawn ahead then; the real trace reports the error
        return


def _discover(gf, args):
    """``(addresses, normal sites)``: the top-level addresses ``gf`` visits for arguments like
    ``args`` and the shapes of its direct normal sites (None if unknown)."""
    from .arguments import data_split

    structure, data, rebuild = data_split(args)
    try:
        spec = (gf, *structure)
        hash(spec)
    except TypeError:
        return None
    cached = _ADDRESS_CACHE.get(spec, _UNKNOWN)
    if cached is not _UNKNOWN:
        return cached
    found = []

    def run(k, zero, dyn_vals):
        _DISCOVERING.zero = zero
        with inline():  # the body itself, never a (possibly cached) staged program of it
            tr = gf.simulate(k, *rebuild(dyn_vals))
        found.append((tuple(tr.subtraces), dict(_DISCOVERING.normals)))

    _DISCOVERING.depth += 1
    _DISCOVERING.normals, _DISCOVERING.handler_depth = {}, len(STATE.handlers) + 1
    try:
        structs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in data]
        jax.eval_shape(run, jax.random.key(0), jax.ShapeDtypeStruct((), jnp.float32), structs)
    except Exception:  # the real trace will report any error with its full context
        return None
    finally:
        _DISCOVERING.depth -= 1
        _DISCOVERING.zero = None
    addrs = found[0] if found else None
    _ADDRESS_CACHE[spec] = addrs
    return addrs


_UNKNOWN = object()
