"""Site log densities computed together: one vectorized call per ``@gen`` execution.

A model with many ``normal`` sites of one shape (``w0 ... w29 ~ normal(0, 1)``) would otherwise
compute each site's log density on its own: dozens of tiny kernels, each a separate fusion for
XLA to compile, and on CPU a separate loop to run. Instead, while a ``@gen`` body runs, each direct
``normal`` site hands ``(value, loc, scale)`` to its execution's :class:`ScoreSink` and receives a
:class:`Deferred` log density. When the body returns, the sink stacks the sites of each shape
(from :data:`MIN_GROUP` sites on) and computes their log densities in one call (numpyro's
``Normal.log_prob``: the same formula and support check), and every site score, the execution's
score and its weight are filled in.

``Deferred`` values are linear expressions ``const + sum_k coef_k * (s_k - off_k)`` over the
pending site scores ``s_k``; they support exactly the arithmetic the GFI methods do with scores
(``+``, ``-``, negation) and never leave the execution that made them. A difference of a site's new
and old score (``update``'s weight) keeps the old score as the site's offset ``off_k``, so an
unchanged site contributes exactly 0, as before.

It is on inside :class:`batched` only: code that needs the total log density and not the per-site
scores (gradient-based MCMC kernels' log density, a gradient of ``assess``). Where a trace with its
per-site scores is returned, stacking the sites and slicing their scores back out costs more XLA
compile time than it saves (a 300-site chain's ``update`` compiles in 3.1 s site by site and 3.6 s
batched), so plain GFI calls score site by site. Deferral is also off in debug mode (per-site
finiteness checks name the address) and under interceptors that have not declared
``scores_deferrable = True``.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model():
    ...     return [ppl.normal(0.0, 1.0) @ f"x{i}" for i in range(5)]
    >>> with batched():
    ...     tr = model.simulate(jax.random.key(0))
    >>> xs = jnp.stack(tr.retval)
    >>> bool(jnp.allclose(tr.score, jnp.sum(-0.5 * xs**2 - 0.5 * jnp.log(2 * jnp.pi))))
    True
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

from .densities import log_density, normal_log_density

__all__ = ["batched", "batching", "Deferred", "ScoreSink", "take_sink", "active_sink", "MIN_GROUP"]

#: Sites of one shape computed together only from this many on; fewer keep one call each (a
#: small model's program is unchanged).
MIN_GROUP = 4


class _Active(threading.local):
    def __init__(self):
        self.sink = None


_ACTIVE = _Active()


class _Batched(threading.local):
    def __init__(self):
        self.depth = 0


_BATCHED = _Batched()


class batched:
    """``with ppl.scores.batched():`` computes the log densities of the normal sites of each
    ``@gen`` execution traced in the block together (one call per shape). Use it around code that
    needs only the *total* log density or weight, e.g. a gradient of ``assess``: there the
    per-site scores are dead code and the program is much smaller. Where the per-site scores are
    kept (a trace is returned), stacking and slicing them back costs more compile time than it
    saves, so it is off by default. Gradient-based MCMC kernels use it for their log density.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m(s):
        ...     return [ppl.normal(0.0, s) @ f"x{i}" for i in range(8)]
        >>> ch = ppl.ChoiceMap({f"x{i}": 0.1 * i for i in range(8)})
        >>> with batched():
        ...     g = jax.grad(lambda s: m.assess(ch, s)[0])(1.5)
        >>> bool(abs(g - jax.grad(lambda s: m.assess(ch, s)[0])(1.5)) < 1e-5)
        True
    """

    def __enter__(self):
        _BATCHED.depth += 1
        return self

    def __exit__(self, *exc):
        _BATCHED.depth -= 1


def batching() -> bool:
    """Whether site log densities are being batched (inside :class:`batched`)."""
    return _BATCHED.depth > 0


class active_sink:
    """``with active_sink(sink):`` lets the next site log density computed in the block be deferred
    to ``sink`` (``None``: computed at once)."""

    def __init__(self, sink):
        self.sink = sink

    def __enter__(self):
        self.prev = _ACTIVE.sink
        _ACTIVE.sink = self.sink

    def __exit__(self, *exc):
        _ACTIVE.sink = self.prev


def take_sink():
    """The sink the current site may defer its log density to (at most once), or ``None``."""
    sink = _ACTIVE.sink
    _ACTIVE.sink = None
    return sink


def _SUPPORT_CHECK() -> bool:
    """Whether numpyro's log_prob masks values outside the support (its default validation)."""
    return bool(nd.Distribution._validate_args)


def _stack(xs, shape, dtype):
    """``xs`` broadcast to ``shape`` and stacked: host constants stay constants (no traced ops)."""
    if not any(isinstance(x, jax.core.Tracer) for x in xs):
        return jnp.asarray(np.stack([np.broadcast_to(np.asarray(x, dtype), shape) for x in xs]))
    out = []
    for x in xs:
        x = x if isinstance(x, jax.core.Tracer) and x.dtype == dtype else jnp.asarray(x, dtype)
        out.append(x if x.shape == shape else jnp.broadcast_to(x, shape))
    return jnp.stack(out)


def _is_zero(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def _plus(a, b):
    if _is_zero(a):
        return b
    if _is_zero(b):
        return a
    return a + b


class Deferred:
    """``const + sum_k coef_k * (s_k - off_k)`` over pending site scores ``s_k`` of one sink."""

    __slots__ = ("sink", "const", "terms")

    def __init__(self, sink, const, terms):
        self.sink = sink
        self.const = const
        self.terms = terms  # tuple of (slot, coef: float, off: array or 0.0)

    def _merge(self, other):
        if isinstance(other, Deferred):
            if other.sink is not self.sink:  # pragma: no cover - a bug, never user-reachable
                raise RuntimeError("deferred scores of two executions mixed")
            return Deferred(self.sink, _plus(self.const, other.const), self.terms + other.terms)
        return Deferred(self.sink, _plus(self.const, other), self.terms)

    def __add__(self, other):
        return self._merge(other)

    __radd__ = __add__

    def __neg__(self):
        const = self.const if _is_zero(self.const) else -self.const
        return Deferred(self.sink, const, tuple((s, -c, o) for s, c, o in self.terms))

    def __sub__(self, other):
        if isinstance(other, Deferred):
            return self._merge(-other)
        if len(self.terms) == 1:  # a site's new score minus its old one: kept together
            s, c, o = self.terms[0]
            return Deferred(self.sink, self.const, ((s, c, _plus(o, other / c if c != 1.0 else other)),))
        return self._merge(-other)

    def __rsub__(self, other):
        return (-self)._merge(other)

    def __repr__(self):
        return f"Deferred({len(self.terms)} site scores)"


class ScoreSink:
    """The pending ``normal`` site log densities of one ``@gen`` execution (see the module doc)."""

    def __init__(self):
        self.groups: dict = {}  # (shape, dtype) -> [(slot, value, loc, scale, dist)]
        self.n = 0
        self.values: dict | None = None  # slot -> site score, once resolved
        self.per_group: list = []  # (slots, per-site scores, or one site's score)

    def defer(self, d, v):
        """A :class:`Deferred` log density of ``d`` at ``v`` if it can be computed with the
        others, else the log density computed now."""
        if type(d) is not nd.Normal:
            return None
        shape = tuple(jnp.shape(v))
        try:
            if tuple(jnp.broadcast_shapes(jnp.shape(d.loc), jnp.shape(d.scale), shape)) != shape:
                return None
        except ValueError:
            return None
        dtype = jnp.result_type(v, d.loc, d.scale)
        slot = self.n
        self.n += 1
        self.groups.setdefault((shape, dtype), []).append((slot, v, d.loc, d.scale, d))
        return Deferred(self, 0.0, ((slot, 1.0, 0.0),))

    def _resolve_groups(self):
        self.values = {}
        self.per_group = []
        for (shape, dtype), entries in self.groups.items():
            if len(entries) < MIN_GROUP:  # a few sites: each on its own, as numpyro computes it
                for slot, v, _, _, d in entries:
                    s = jnp.sum(log_density(d, v))
                    self.values[slot] = s
                    self.per_group.append(((slot,), None, s))
                continue
            vs = _stack([e[1] for e in entries], shape, dtype)
            locs = _stack([e[2] for e in entries], shape, dtype)
            scales = _stack([e[3] for e in entries], shape, dtype)
            lp = normal_log_density(vs, locs, scales, _SUPPORT_CHECK())
            per = jnp.sum(lp.reshape(len(entries), -1), axis=1) if shape else lp
            slots = tuple(e[0] for e in entries)
            self.per_group.append((slots, per, None))
            self.values.update(zip(slots, jnp.unstack(per)))  # one op, not one slice per site

    def resolve(self, x):
        """``x`` with its deferred parts computed (other values are returned unchanged)."""
        if not isinstance(x, Deferred):
            return x
        if self.values is None:
            self._resolve_groups()
        if len(x.terms) == 1 and _is_zero(x.const):
            s, c, o = x.terms[0]
            if c == 1.0 and _is_zero(o):  # one site's score
                return self.values[s]
        by_slot = {}  # slot -> (sum of coefficients, sum of coefficient * offset)
        for s, c, o in x.terms:
            co = o if (c == 1.0 or _is_zero(o)) else c * o
            prev = by_slot.get(s)
            by_slot[s] = (c, co) if prev is None else (prev[0] + c, _plus(prev[1], co))
        total = x.const
        for slots, per, single in self.per_group:
            picked = [(j, by_slot[s]) for j, s in enumerate(slots) if s in by_slot]
            if not picked:
                continue
            if per is None:  # one site in its group
                c, co = picked[0][1]
                term = single if c == 1.0 else c * single
                total = _plus(total, term if _is_zero(co) else term - co)
                continue
            idx = [j for j, _ in picked]
            sel = per if len(idx) == len(slots) else per[np.asarray(idx)]
            coefs = np.asarray([v[0] for _, v in picked], dtype=np.float32)
            if not np.all(coefs == 1.0):
                sel = jnp.asarray(coefs, sel.dtype) * sel
            offs = [v[1] for _, v in picked]
            if any(not _is_zero(o) for o in offs):  # new minus old score, site by site
                sel = sel - jnp.stack([jnp.broadcast_to(jnp.asarray(o, sel.dtype), ()) for o in offs])
            total = _plus(total, jnp.sum(sel))
        return total
