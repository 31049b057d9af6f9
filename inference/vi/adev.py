"""ADEV: expectation programs compiled into unbiased gradient estimators.

An *expectation program* ``f(key, params, *args)`` samples (through ``ppl`` generative functions
and distributions) and returns a scalar; it denotes ``E[f]``. ``@vi.expectation`` turns it into an
object with ``estimate``, ``grad_estimate`` and ``value_and_grad_estimate``.

How it works (at JAX trace time; the compiled program is plain JAX):

1. The program runs under an interceptor that sees every distribution site with its full
   address and picks the site's strategy (``vi.with_estimators`` override, else the site's own
   ``estimator=``, else reparam/reinforce by distribution). It calls the strategy's methods with
   a :class:`~inference.vi.estimators.Site` (``check``, then ``sample``; ``expand`` when
   ``sample`` branched): strategies live in ``estimators.py`` and this file names none of them.
2. Programs are pure functions of their keys, and a site's key is ``fold_in(key, hash(address))``,
   so re-running the program with one site's value forced gives "the rest of the program as a
   function of that value" (the continuation) with all other randomness unchanged. Strategies
   that branch (``enum``, ``mvd``, the ``"mean"`` baseline) use these replays (vectorized with
   ``jax.vmap`` over the forced values).
3. The result is a *surrogate* scalar ``S(params)`` whose value is the estimate and whose
   ``jax.grad`` is the unbiased gradient estimate:

   - reparam: the sample is differentiable, nothing to add;
   - score terms (reinforce): ``S = f * exp(L - stop(L)) - sum_s b_s * (exp(l_s - stop(l_s)) - 1)``
     where ``L`` sums the log densities ``l_s`` of the sites that added a score term (value ``f``,
     gradient ``grad f + sum_s (f - b_s) grad l_s``: the score term covers all of the downstream
     program);
   - enum: ``S = sum_v q(v) S_v`` over replays with the site forced to each ``v``;
   - mvd: ``S = S_v + sum_j (theta_j - stop(theta_j)) * stop(c_j (f(v+_j) - f(v-_j)))``.

   These compose: replays are themselves surrogates, so strategies mix and nest freely.
   Score terms of sites inside ``ppl.vmap`` / ``repeat`` / ``scan`` / ``cond`` cannot pass their
   log density out of the loop; it is read from the trace returned by the outermost GFI call
   (``Interceptor.returned``) with the trace protocol's ``site_score(path)``.

Examples:
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
import jax.extend.core as _jex

from ppl.core import (
    STATE,
    GenerativeFunction,
    Interceptor,
    Trace,
    choice_paths,
    current_path,
    intercept,
    pack_args,
    unpack_args,
)
from ppl.errors import ModelError, fmt_addr
from ppl.staging import gc_paused

from .marginal import DETACH
from .estimators import EstimatorError, Site, as_strategy, default_strategy, plain_key

__all__ = ["expectation", "Expectation", "with_estimators", "map_mean", "MapMean"]

_sg = jax.lax.stop_gradient


def _trace_state():
    """JAX's current trace, as an opaque comparable token (nested vmap/scan/jit make new ones)."""
    return _jex.get_opaque_trace_state()


@functools.lru_cache(maxsize=1)
def _eval_state():
    """The token of JAX's top-level eager (evaluation) trace."""
    with _jex.take_current_trace():
        return _jex.get_opaque_trace_state()


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

    Examples:
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
    """Raised by ``site.branch``: the driver hands the site to its strategy's ``expand``."""

    def __init__(self, site, value):
        self.site, self.value = site, value


@dataclasses.dataclass
class _Ctx:
    fn: Callable
    name: str
    key: Any
    params: Any
    args: tuple


class _ADEV(Interceptor):
    """Runs the program once, asking each site's strategy for its value (``Strategy.sample``)."""

    def __init__(self, ctx: _Ctx, forced: dict, mode: str):
        self.ctx, self.forced, self.mode = ctx, forced, mode
        self.counts: dict = {}
        self.terms: list = []  # score terms: (log density, baseline, replay)
        self.deferred: dict = {}  # nested score terms of the current outermost GFI call
        self.entry = None

    def _strategy(self, path, gf, d):
        s = _lookup_override(path)
        if s is None:
            s = getattr(gf, "estimator", None)
        if s is None:
            return default_strategy(d)
        return as_strategy(s, f"site {fmt_addr(path)}")

    def sample(self, path, gf, d, key):
        occ = self.counts.get(path, 0)
        self.counts[path] = occ + 1
        sid = (path, occ)
        if DETACH.depth:
            return _sg(gf.draw(d, key))
        site = Site(path, gf, d, key, self._strategy(path, gf, d), program=self, sid=sid)
        site.strategy.check(site)
        if sid in self.forced:
            return self.forced[sid]
        return site.strategy.sample(site)

    # -- the tools a Site offers its strategy ----------------------------------------------------
    def site_nested(self):
        return _trace_state() != self.entry

    def replayer(self, site):
        def replay(value, mode=None):
            return _run(self.ctx, {**self.forced, site._sid: value}, mode or self.mode)
        return replay

    def branch(self, site, value):
        if self.site_nested():
            raise EstimatorError(
                f"{site.strategy!r} at site {fmt_addr(site.path)} ({site.gf.name}) in expectation "
                f"{self.ctx.name}: the site is sampled inside a vectorized or looped context (ppl.vmap / "
                "repeat / scan / cond, or jax.vmap / lax.scan in the program), where the rest of the "
                "program cannot be replayed per value. Use vi.reinforce() (or vi.reparam for a "
                "continuous site) there, or draw the copies with separate top-level calls (a Python "
                "loop over particles; vi.map_mean for data batches).")
        raise _Branch(site, value)

    def score_term(self, site, value, baseline):
        if self.mode != "grad":
            return
        if not self.site_nested():
            self.terms.append((jnp.sum(site.d.log_prob(value)), baseline, self.replayer(site)))
            return
        # inside a loop/vectorized context: the log density (summed over copies) is read from the
        # trace returned by the outermost GFI call, in ``returned``
        if STATE.gfi_depth == 0:
            raise EstimatorError(
                f"{site.strategy!r} at site {fmt_addr(site.path)} ({site.gf.name}) in expectation "
                f"{self.ctx.name}: the site is sampled inside jax.vmap / lax.scan written in the "
                "program, where its score term cannot reach the estimator. Use guide.repeat(K) / "
                "ppl.vmap / ppl.scan instead (their traces carry the scores), separate top-level "
                "calls, or vi.map_mean for data batches.")
        self.deferred.setdefault(site.path, (site, baseline))

    def returned(self, gf, method, out):
        if not self.deferred:
            return out
        deferred, self.deferred = self.deferred, {}
        tr = out[0] if isinstance(out, tuple) else out
        if self.site_nested():
            path = next(iter(deferred))
            raise EstimatorError(
                f"reinforce site {fmt_addr(path)} in expectation {self.ctx.name}: {gf.name}.{method} "
                "was called inside jax.vmap / lax.scan written in the program, where score terms cannot "
                "reach the estimator; use guide.repeat(K) / ppl.vmap instead, separate top-level "
                "calls, or vi.map_mean for data batches.")
        for path, (site, baseline) in deferred.items():
            score = tr.site_score(path) if isinstance(tr, Trace) else None
            if score is None:
                raise EstimatorError(
                    f"internal: could not find the log density of reinforce site {fmt_addr(path)} in the "
                    f"trace returned by {gf.name}.{method}")
            self.terms.append((score, baseline, _no_replay(site)))
        return out


def _no_replay(site):
    def replay(value, mode=None):
        raise EstimatorError(f"{site.strategy!r} at site {fmt_addr(site.path)}: the site is sampled inside "
                             "ppl.vmap / repeat / scan / cond, where the program cannot be replayed")
    return replay


def _run(ctx: _Ctx, forced: dict, mode: str):
    """The surrogate of the program with ``forced`` site values (see the module docstring)."""
    icpt, branch = _ADEV(ctx, forced, mode), None
    try:
        with intercept(icpt):
            icpt.entry = _trace_state()
            out = ctx.fn(ctx.key, ctx.params, *ctx.args)
    except _Branch as br:
        branch = br
    if branch is not None:  # the strategy builds the surrogate from replays of the program
        site = branch.site
        s = site.strategy.expand(site, branch.value, icpt.replayer(site))
        if jnp.shape(s) != ():
            raise EstimatorError(f"{site.strategy!r}.expand at {site.where} returned shape {jnp.shape(s)}; "
                                 "it must return a scalar surrogate")
        return s
    out = _check_scalar(out, ctx.name)
    if mode == "value" or not icpt.terms:
        return out
    s = out * _magic(sum(t[0] for t in icpt.terms))
    for logq, baseline, replay in icpt.terms:
        b = baseline(replay) if callable(baseline) else baseline
        if b is not None:
            s = s - _sg(b) * (_magic(logq) - 1.0)
    return s


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
    return _trace_state() != _eval_state() or bool(STATE.interceptors) or bool(STATE.handlers)


def _inside_program() -> bool:
    return any(isinstance(i, _ADEV) for i in STATE.interceptors)


class Expectation:
    """An expectation program ``f(key, params, *args) -> scalar`` and its estimators.

    Called directly (``f(key, params, *args)``) it runs the program itself; inside another
    expectation program that inlines it, so its sites join the outer program's estimator.

    Examples:
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
        with gc_paused():
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
        with gc_paused():
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
        ks = jax.random.split(plain_key(key), n)
        vals = jax.vmap(lambda k, *a: fn(k, params, a), in_axes=(0, *axes))(ks, *args)
        return jnp.mean(vals)

    def _surrogate(self, key, params, args, mode):
        return self._mean(key, params, tuple(args), lambda k, p, a: self.inner._surrogate(k, p, a, mode))


def map_mean(objective, in_axes=0) -> MapMean:
    """Average a per-datum expectation over a batch: ``mean_i objective(key_i, params, *args_i)``.

    ``in_axes`` says which arguments are mapped (leading axis; ``None`` = shared). Each datum's
    program gets its own surrogate (so every strategy works per datum, including reinforce, enum
    and mvd) and the gradient is taken once of their mean: no per-example gradients.

    Examples:
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

    Examples:
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
