"""ADEV: expectation programs compiled into unbiased gradient estimators.

An *expectation program* ``f(key, params, *args)`` samples (through ``ppl`` generative functions
and distributions) and returns a scalar; it denotes ``E[f]``. ``@vi.expectation`` turns it into an
object with ``estimate``, ``grad_estimate`` and ``value_and_grad_estimate``.

How it works (at JAX trace time; the compiled program is plain JAX):

1. The program runs under an interceptor that sees every distribution site with its full
   address and picks the site's strategy (``vi.with_estimators`` override, else the site's own
   ``estimator=``, else reparam/reinforce by distribution).
2. Programs are pure functions of their keys, and a site's key is ``fold_in(key, hash(address))``,
   so re-running the program with one site's value forced gives "the rest of the program as a
   function of that value" (the continuation) with all other randomness unchanged. ``enum``
   and ``mvd`` sites use these replays (vectorized with ``jax.vmap`` over the forced values).
3. The result is a *surrogate* scalar ``S(params)`` whose value is the estimate and whose
   ``jax.grad`` is the unbiased gradient estimate:

   - reparam: the sample is differentiable, nothing to add;
   - reinforce: ``S = f * exp(L - stop(L)) - sum_s b_s * (exp(l_s - stop(l_s)) - 1)`` where
     ``L`` sums the log densities ``l_s`` of the reinforce sites (value ``f``, gradient
     ``grad f + sum_s (f - b_s) grad l_s``: the score term covers all of the downstream program);
   - enum: ``S = sum_v q(v) S_v`` over replays with the site forced to each ``v``;
   - mvd: ``S = S_v + sum_j (theta_j - stop(theta_j)) * stop(c_j (f(v+_j) - f(v-_j)))``.

   These compose: replays are themselves surrogates, so strategies mix and nest freely.
   Reinforce sites inside ``ppl.vmap`` / ``repeat`` / ``scan`` / ``cond`` cannot pass their log
   density out of the loop; their score term is read from the trace returned by the outermost
   GFI call (``Interceptor.returned``), which stores each site's log density.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import vi
    >>> @ppl.gen
    ... def q(mu):
    ...     return ppl.normal(mu, 1.0) @ "z"
    >>> @vi.expectation
    ... def f(key, mu):
    ...     z = q.simulate(key, mu).retval
    ...     return z ** 2                     # E[z^2] = mu^2 + 1, gradient 2 mu
    >>> g = jax.vmap(lambda k: f.grad_estimate(k, 1.5))(jax.random.split(jax.random.key(0), 4000))
    >>> bool(abs(g.mean() - 3.0) < 0.1)
    True
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax._src import core as _jcore

from ppl import keys as _keys
from ppl.core import (
    STATE,
    GenerativeFunction,
    Interceptor,
    choice_paths,
    current_path,
    intercept,
    pack_args,
    unpack_args,
)
from ppl.errors import ModelError, fmt_addr

from .marginal import DETACH
from .estimators import (
    Enum,
    EstimatorError,
    MVD,
    Reinforce,
    Reparam,
    as_strategy,
    check_applicable,
    default_strategy,
    enum_configs,
    mvd_requests,
)

__all__ = ["expectation", "Expectation", "with_estimators", "map_mean", "MapMean"]

_sg = jax.lax.stop_gradient


def _cur_trace():
    return _jcore.trace_ctx.trace


def _magic(logp):
    """``exp(l - stop(l))``: value 1, gradient ``grad l``."""
    return jnp.exp(logp - _sg(logp))


# --------------------------------------------------------------------------- estimator overrides
class _Overrides(threading.local):
    def __init__(self):
        self.frames: list = []  # (prefix path, {relative path tuple: strategy})


_OVR = _Overrides()


def _lookup_override(path):
    for prefix, mapping in _OVR.frames:  # outermost first: an outer override wins
        if path[: len(prefix)] != prefix:
            continue
        rel = path[len(prefix):]
        for i in range(len(rel), 0, -1):
            s = mapping.get(rel[:i])
            if s is not None:
                return s
    return None


def _norm_addr(a):
    return a if isinstance(a, tuple) else (a,)


@dataclasses.dataclass(frozen=True, eq=True)
class _WithEstimators(GenerativeFunction):
    gf: Any
    mapping: tuple  # ((relative path, strategy), ...)

    @property
    def name(self):
        return self.gf.name

    def _frame(self, method, args):
        _OVR.frames.append((current_path(), dict(self.mapping)))
        try:
            out = getattr(self.gf, method)(*args)
        finally:
            _OVR.frames.pop()
        self._check_addresses(args[0] if method == "assess" else (out[0] if isinstance(out, tuple) else out))
        return out

    def _check_addresses(self, trace_or_choices):
        """Every override must name a site of ``gf`` or a prefix of some (a nested call)."""
        present = choice_paths(trace_or_choices)
        if present is None:
            return
        for path, _ in self.mapping:
            if path == () or any(p[: len(path)] == path for p in present):
                continue
            shown = sorted({p[0] if len(p) == 1 else p for p in present}, key=str)
            raise ModelError(
                f"vi.with_estimators({self.gf.name}): the override at address {fmt_addr(path)} names "
                f"no choice of {self.gf.name} (its addresses are {shown[:20]}); fix the spelling or "
                "name a nested call that contains sites."
            )

    def _simulate(self, *a):
        return self._frame("simulate", a)

    def _assess(self, *a):
        return self._frame("assess", a)

    def _generate(self, *a):
        return self._frame("generate", a)

    def _update(self, *a):
        return self._frame("update", a)

    def _regenerate(self, *a):
        return self._frame("regenerate", a)

    def __repr__(self):
        return f"with_estimators({self.gf!r}, {dict(self.mapping)})"


def with_estimators(gf: GenerativeFunction, estimators: dict) -> GenerativeFunction:
    """``gf`` with gradient strategies set from outside: ``{address: strategy}``.

    An address may name a site or a nested call (all sites under it). Overrides win over the
    strategy written at the site. Outside expectation programs the result behaves exactly as
    ``gf``.

    Example:
        >>> import jax, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def guide(p):
        ...     return ppl.flip(p) @ "b"
        >>> g = vi.with_estimators(guide, {"b": vi.enum})
        >>> @vi.expectation
        ... def f(key, p):
        ...     return 3.0 * g.simulate(key, p).retval     # E = 3 p exactly, by enumeration
        >>> float(f.estimate(jax.random.key(0), 0.25)), float(f.grad_estimate(jax.random.key(0), 0.25))
        (0.75, 3.0)
    """
    if not isinstance(gf, GenerativeFunction):
        raise TypeError(f"vi.with_estimators expects a generative function, got {gf!r}")
    items = []
    for addr, s in estimators.items():
        items.append((_norm_addr(addr), as_strategy(s, f"vi.with_estimators at {fmt_addr(_norm_addr(addr))}")))
    return _WithEstimators(gf, tuple(items))


# --------------------------------------------------------------------------- the interpreter
class _Branch(BaseException):
    """Raised at an enum/mvd site: the driver replays the program once per forced value."""

    def __init__(self, sid, gf, d, key, strategy, value):
        self.sid, self.gf, self.d, self.key, self.strategy, self.value = sid, gf, d, key, strategy, value


@dataclasses.dataclass
class _Ctx:
    fn: Callable
    name: str
    key: Any
    params: Any
    args: tuple


class _ADEV(Interceptor):
    def __init__(self, ctx: _Ctx, forced: dict, mode: str):
        self.ctx, self.forced, self.mode = ctx, forced, mode
        self.counts: dict = {}
        self.terms: list = []  # reinforce sites: (sid, gf, d, key, value, logq, strategy)
        self.deferred: dict = {}  # nested reinforce sites of the current outermost GFI call
        self.entry = None

    def _strategy(self, path, gf, d):
        s = _lookup_override(path)
        if s is None:
            s = getattr(gf, "estimator", None)
        if s is None:
            return default_strategy(d)
        return as_strategy(s, f"site {fmt_addr(path)}")

    def _nested_reinforce(self, path, gf, d, key, strategy):
        """A reinforce site inside a loop/vectorized context: its score term is read from the trace
        returned by the outermost GFI call (the site's log density, summed over its copies)."""
        if self.mode == "grad":
            if strategy.baseline == "mean":
                raise EstimatorError(
                    f"vi.reinforce(baseline=\"mean\") at site {fmt_addr(path)} ({gf.name}): the site is "
                    "sampled inside ppl.vmap / repeat / scan / cond, where it cannot be replayed; use a "
                    "constant or callable baseline there")
            if STATE.gfi_depth == 0:
                raise EstimatorError(
                    f"{strategy!r} at site {fmt_addr(path)} ({gf.name}) in expectation {self.ctx.name}: "
                    "the site is sampled inside jax.vmap / lax.scan written in the program, where its "
                    "score term cannot reach the estimator. Use guide.repeat(K) / ppl.vmap / ppl.scan "
                    "instead (their traces carry the scores), separate top-level calls, or vi.map_mean "
                    "for data batches.")
            if path not in self.deferred:
                self.deferred[path] = (gf, strategy)
        return _sg(gf.draw(d, key))

    def returned(self, gf, method, out):
        if not self.deferred:
            return out
        deferred, self.deferred = self.deferred, {}
        tr = out[0] if isinstance(out, tuple) else out
        if _cur_trace() is not self.entry:
            path = next(iter(deferred))
            raise EstimatorError(
                f"reinforce site {fmt_addr(path)} in expectation {self.ctx.name}: {gf.name}.{method} "
                "was called inside jax.vmap / lax.scan written in the program, where score terms cannot "
                "reach the estimator; use guide.repeat(K) / ppl.vmap instead, separate top-level "
                "calls, or vi.map_mean for data batches.")
        for path, (site_gf, strategy) in deferred.items():
            score = _site_score(tr, path)
            if score is None:
                raise EstimatorError(
                    f"internal: could not find the log density of reinforce site {fmt_addr(path)} in the "
                    f"trace returned by {gf.name}.{method}")
            self.terms.append((("nested",) + path, site_gf, None, None, None, score, strategy))
        return out

    def sample(self, path, gf, d, key):
        occ = self.counts.get(path, 0)
        self.counts[path] = occ + 1
        sid = (path, occ)
        if DETACH.depth:
            return _sg(gf.draw(d, key))
        strategy = self._strategy(path, gf, d)
        check_applicable(strategy, path, gf, d)
        if sid in self.forced:
            return self.forced[sid]
        if isinstance(strategy, Reparam):
            return gf.draw(d, key)
        nested = _cur_trace() is not self.entry
        if nested:
            if isinstance(strategy, Reinforce):
                return self._nested_reinforce(path, gf, d, key, strategy)
            raise EstimatorError(
                f"{strategy!r} at site {fmt_addr(path)} ({gf.name}) in expectation {self.ctx.name}: "
                "the site is sampled inside a vectorized or looped context (ppl.vmap / repeat / "
                "scan / cond, or jax.vmap / lax.scan in the program), where the rest of the program "
                "cannot be replayed per value. Use vi.reinforce() (or vi.reparam for a continuous "
                "site) there, or draw the copies with separate top-level calls (a Python loop over "
                "particles; vi.map_mean for data batches).")
        value = _sg(gf.draw(d, key))
        if isinstance(strategy, Reinforce):
            if self.mode == "grad":
                self.terms.append((sid, gf, d, key, value, jnp.sum(d.log_prob(value)), strategy))
            return value
        if isinstance(strategy, MVD) and self.mode == "value":
            return value
        raise _Branch(sid, gf, d, key, strategy, value)


def _site_score(tr, path):
    """Sum of the log densities stored in trace ``tr`` for the site at ``path`` (all copies)."""
    if tr is None:
        return None
    if not path:
        return jnp.sum(tr.score) if hasattr(tr, "value") else None
    if hasattr(tr, "subtraces"):
        return _site_score(tr.subtraces.get(path[0]), path[1:])
    if hasattr(tr, "inner"):
        return _site_score(tr.inner, path)
    if hasattr(tr, "component") and hasattr(tr, "branch"):
        if path[0] == "component":
            return _site_score(tr.component, path[1:])
        return _site_score(tr.branch, path)
    if hasattr(tr, "subs"):
        found = [s for s in (_site_score(sub, path) for sub in tr.subs) if s is not None]
        return sum(found) if found else None
    return None


def _run(ctx: _Ctx, forced: dict, mode: str):
    """The surrogate of the program with ``forced`` site values (see the module docstring)."""
    icpt = _ADEV(ctx, forced, mode)
    try:
        with intercept(icpt):
            icpt.entry = _cur_trace()
            out = ctx.fn(ctx.key, ctx.params, *ctx.args)
    except _Branch as br:
        return _branch(ctx, forced, mode, br)
    out = _check_scalar(out, ctx.name)
    if mode == "value" or not icpt.terms:
        return out
    total = sum(t[5] for t in icpt.terms)
    s = out * _magic(total)
    for sid, gf, d, key, value, logq, strategy in icpt.terms:
        b = _baseline(ctx, forced, strategy, sid, gf, d, key)
        if b is not None:
            s = s - b * (_magic(logq) - 1.0)
    return s


def _baseline(ctx, forced, strategy, sid, gf, d, key):
    b = strategy.baseline
    if b is None:
        return None
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return float(b)
    if b == "mean":
        vals = []
        for j in range(strategy.n_baseline):
            v2 = _sg(gf.draw(d, _keys.fold_in(key, 0x5EED + j)))
            vals.append(_run(ctx, {**forced, sid: v2}, "value"))
        return _sg(sum(vals) / len(vals))
    out = b(ctx.params, *ctx.args)
    if jnp.shape(out) != ():
        raise EstimatorError(f"the baseline callable at site {fmt_addr(sid[0])} returned shape "
                             f"{jnp.shape(out)}; it must return a scalar")
    return _sg(out)


def _branch(ctx, forced, mode, br: _Branch):
    d, sid = br.d, br.sid
    if isinstance(br.strategy, Enum):
        configs = enum_configs(d)
        logp = jax.vmap(lambda c: jnp.sum(d.log_prob(c)))(configs)
        vals = jax.vmap(lambda c: _run(ctx, {**forced, sid: c}, mode))(configs)
        w = jnp.exp(logp)
        return jnp.sum(jnp.where(w > 0, w * vals, 0.0))
    # MVD: the main run at the sampled value plus a zero-valued term carrying the derivative
    v = br.value
    main = _run(ctx, {**forced, sid: v}, mode)
    idx, new, combine = mvd_requests(d, v, jax.random.fold_in(_plain_key(br.key), 0x3D))
    shape = jnp.shape(v)

    def replay(i, e):
        return _run(ctx, {**forced, sid: v.reshape(-1).at[i].set(e).reshape(shape)}, "value")

    vals = jax.vmap(replay)(idx, new)
    return main + combine(_sg(vals), _sg(main))


def _plain_key(key):
    if isinstance(key, _keys.LaneKey):
        return jax.random.fold_in(key.base, key.lane)
    return key


def _check_scalar(out, name):
    try:
        arr = jnp.asarray(out)
    except TypeError:
        raise EstimatorError(
            f"expectation {name} returned {type(out).__name__}; an expectation program must return "
            "a scalar (e.g. the sum of a per-datum objective)") from None
    if arr.shape != ():
        raise EstimatorError(
            f"expectation {name} returned an array of shape {arr.shape}; an expectation program "
            "must return a scalar (sum or average it, e.g. jnp.sum(...))")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    return arr


def _check_params(params, name):
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in leaves:
        if isinstance(leaf, (bool, int)) or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise EstimatorError(
                f"expectation {name}: params{jax.tree_util.keystr(path)} has dtype "
                f"{jnp.result_type(leaf).name if not isinstance(leaf, (bool, int)) else type(leaf).__name__}; "
                "params must be a pytree of float arrays (gradients are taken with respect to every "
                "leaf). Pass integers, flags and data as extra arguments after params.")


def _tracing() -> bool:
    return not isinstance(_cur_trace(), _jcore.EvalTrace) or bool(STATE.interceptors) or bool(STATE.handlers)


def _inside_program() -> bool:
    return any(isinstance(i, _ADEV) for i in STATE.interceptors)


class Expectation:
    """An expectation program ``f(key, params, *args) -> scalar`` and its estimators.

    Called directly (``f(key, params, *args)``) it runs the program itself; inside another
    expectation program that inlines it, so its sites join the outer program's estimator.

    Example:
        >>> import jax, ppl
        >>> from inference import vi
        >>> @vi.expectation
        ... def f(key, theta):
        ...     return ppl.normal.simulate(key, theta, 1.0).retval * 2.0
        >>> v, g = f.value_and_grad_estimate(jax.random.key(0), 0.5)
        >>> float(g)
        2.0
    """

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"vi.expectation expects a function f(key, params, *args), got {fn!r}")
        self.fn = fn
        self.name = getattr(fn, "__name__", "expectation")
        functools.update_wrapper(self, fn)
        self._jit_value = jax.jit(self._value_packed)
        self._jit_vg = jax.jit(self._vg_packed)

    def __call__(self, key, params, *args):
        return self.fn(key, params, *args)

    def __repr__(self):
        return f"<expectation {self.name}>"

    # -- implementation ------------------------------------------------------------------------
    def _surrogate(self, key, params, args, mode):
        return _run(_Ctx(self.fn, self.name, key, params, tuple(args)), {}, mode)

    def _value(self, key, params, args):
        _check_params(params, self.name)
        return self._surrogate(key, params, args, "value")

    def _vg(self, key, params, args):
        _check_params(params, self.name)
        return jax.value_and_grad(lambda p: self._surrogate(key, params=p, args=args, mode="grad"))(params)

    def _value_packed(self, key, params, packed):
        return self._value(key, params, unpack_args(packed))

    def _vg_packed(self, key, params, packed):
        return self._vg(key, params, unpack_args(packed))

    # -- public --------------------------------------------------------------------------------
    def estimate(self, key, params, *args):
        """An unbiased estimate of ``E[f]`` (enumerated sites are summed exactly)."""
        if _inside_program():
            return _check_scalar(self(key, params, *args), self.name)
        if _tracing():
            return self._value(key, params, args)
        return self._jit_value(key, params, pack_args(args))

    def value_and_grad_estimate(self, key, params, *args):
        """``(estimate, gradient estimate)`` from one pass; the gradient is a pytree like ``params``."""
        if _inside_program():
            raise EstimatorError(
                f"{self.name}.value_and_grad_estimate was called inside another expectation program; "
                f"call {self.name}(key, params, ...) or {self.name}.estimate(...) there instead: the "
                "outer program's estimator differentiates through it")
        if _tracing():
            return self._vg(key, params, args)
        return self._jit_vg(key, params, pack_args(args))

    def grad_estimate(self, key, params, *args):
        """An unbiased estimate of ``d/dparams E[f]`` (a pytree like ``params``)."""
        return self.value_and_grad_estimate(key, params, *args)[1]


class MapMean(Expectation):
    """The mean over a batch of independent copies of a per-datum expectation (see :func:`map_mean`)."""

    def __init__(self, inner: Expectation, in_axes=0):
        if not isinstance(inner, Expectation):
            inner = Expectation(inner)
        self.inner = inner
        self.in_axes = in_axes
        super().__init__(inner.fn)
        self.name = f"map_mean({inner.name})"

    def __call__(self, key, params, *args):
        return self._mean(key, params, args, lambda k, p, a: self.inner.fn(k, p, *a))

    def _axes(self, args):
        if isinstance(self.in_axes, (tuple, list)):
            if len(self.in_axes) != len(args):
                raise EstimatorError(f"{self.name}: in_axes has {len(self.in_axes)} entries for {len(args)} arguments")
            return tuple(self.in_axes)
        return (self.in_axes,) * len(args)

    def _mean(self, key, params, args, fn):
        axes = self._axes(args)
        sizes = {jnp.shape(leaf)[ax] for a, ax in zip(args, axes) if ax is not None
                 for leaf in jax.tree_util.tree_leaves(a)}
        if len(sizes) != 1:
            raise EstimatorError(f"{self.name}: the mapped arguments need one common leading size, got {sorted(sizes)}")
        n = sizes.pop()
        ks = jax.random.split(_plain_key(key), n)
        vals = jax.vmap(lambda k, *a: fn(k, params, a), in_axes=(0, *axes))(ks, *args)
        return jnp.mean(vals)

    def _surrogate(self, key, params, args, mode):
        return self._mean(key, params, tuple(args), lambda k, p, a: self.inner._surrogate(k, p, a, mode))


def map_mean(objective, in_axes=0) -> MapMean:
    """Average a per-datum expectation over a batch: ``mean_i objective(key_i, params, *args_i)``.

    ``in_axes`` says which arguments are mapped (leading axis; ``None`` = shared). Each datum's
    program gets its own surrogate (so every strategy works per datum, including reinforce, enum
    and mvd) and the gradient is taken once of their mean: no per-example gradients.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @vi.expectation
        ... def per_datum(key, theta, x):
        ...     b = ppl.flip.simulate(key, jax.nn.sigmoid(theta)).retval   # reinforce by default
        ...     return -(b - x) ** 2
        >>> obj = vi.map_mean(per_datum, in_axes=(0,))
        >>> obj.estimate(jax.random.key(0), 0.0, jnp.array([0.0, 1.0, 1.0])).shape
        ()
    """
    return MapMean(objective, in_axes)


def expectation(fn: Callable) -> Expectation:
    """Decorate ``f(key, params, *args) -> scalar`` as an expectation program.

    Example:
        >>> import jax, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def guide(theta):
        ...     return ppl.flip(theta, estimator=vi.enum) @ "b"
        >>> @vi.expectation
        ... def f(key, theta):
        ...     b = guide.simulate(key, theta).retval
        ...     return jax.numpy.where(b == 1, 5.0, 1.0)     # E = 1 + 4 theta
        >>> round(float(f.grad_estimate(jax.random.key(3), 0.2)), 4)
        4.0
    """
    return Expectation(fn)
