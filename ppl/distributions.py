"""Distributions as generative functions: thin wrappers over ``numpyro.distributions``.

Each wrapper takes the numpyro constructor's parameters, with the same names and positional
order (``normal(loc, scale)``, ``gamma(concentration, rate)``, ``bernoulli(probs=...)`` or
``bernoulli(logits=...)``). A site may hold an array (batched parameters): its log density is the
sum over the whole array in every GFI method. Any numpyro distribution can be used at a site
with :func:`dist`. Densities and samplers are numpyro's; nothing is re-implemented here.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model(xs):
    ...     slope = ppl.normal(0.0, 1.0) @ "slope"
    ...     return ppl.normal(slope * xs, 0.5) @ "ys"
    >>> tr = model.simulate(jax.random.key(0), jnp.arange(3.0))
    >>> tr.choices["ys"].shape
    (3,)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

from . import keys
from .choicemap import ChoiceMap, Masked, concrete_bool
from .core import (
    STATE,
    GenerativeFunction,
    Invocation,
    Trace,
    active_interceptor,
    current_path,
    defer_value_check,
    pack_args,
    raise_from_callback,
    trace_dataclass,
)
from .errors import AddressError, ModelError, NonFiniteError, ParameterError, ShapeError, fmt_addr

__all__ = [
    "DistributionGF",
    "DistTrace",
    "dist",
    "normal",
    "half_normal",
    "log_normal",
    "gamma",
    "inverse_gamma",
    "beta",
    "exponential",
    "uniform",
    "student_t",
    "cauchy",
    "laplace",
    "dirichlet",
    "mv_normal",
    "bernoulli",
    "flip",
    "binomial",
    "poisson",
    "categorical",
    "geometric",
]


@trace_dataclass
class DistTrace(Trace):
    """Trace of a distribution: one value at the root address ``()``."""

    gf: Any
    packed_args: Any
    value: Any
    score: Any

    @property
    def retval(self):
        return self.value

    def get_choices(self) -> ChoiceMap:
        return ChoiceMap.value(self.value)

    def get_scores(self) -> ChoiceMap:
        return ChoiceMap.value(self.score)

    def strip(self):
        return dataclasses.replace(self, packed_args=None)


_SAMPLE_DTYPES: dict = {}


def _sample_dtype(d):
    key = (type(d), type(getattr(d, "base_dist", None)))
    if key not in _SAMPLE_DTYPES:
        _SAMPLE_DTYPES[key] = jax.eval_shape(d.sample, jax.random.key(0)).dtype
    return _SAMPLE_DTYPES[key]


def _raise_in_callback(ok, value, message):
    if not np.all(ok):
        bad = np.asarray(value)[~np.broadcast_to(np.asarray(ok), np.shape(value))] if np.ndim(value) else value
        raise_from_callback(ParameterError(f"{message}, got {np.asarray(bad).ravel()[:5]} (debug-mode "
                                           "run-time check). Fix the value or the computation producing it."))


def debug_check(fn, *args):
    """Run the host check ``fn(*args)`` (numpy arrays; Python strings pass through) when the
    compiled program runs. Unlike ``jax.debug.callback``, whose ``vmap`` rule unrolls one callback
    per batch element (minutes of XLA compile time for a few hundred particles), the check is an
    unordered ``io_callback``: vmapped, it becomes one rolled loop. Gradients do not flow into it.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> seen = []
        >>> f = jax.jit(jax.vmap(lambda x: (debug_check(lambda v, tag: seen.append((float(v), tag)), x, "ok"), x)[1]))
        >>> _ = jax.block_until_ready(f(jnp.arange(3.0)))
        >>> sorted(seen)
        [(0.0, 'ok'), (1.0, 'ok'), (2.0, 'ok')]
    """
    static = [a if isinstance(a, str) else None for a in args]
    dyn = [jax.lax.stop_gradient(jnp.asarray(a)) for a in args if not isinstance(a, str)]

    def host(*vals):
        it = iter(vals)
        fn(*[s if s is not None else next(it) for s in static])

    if STATE.branch_depth:  # inside ppl.cond/switch/mix: vmap of cond rejects io effects
        jax.debug.callback(host, *dyn)
    else:
        jax.experimental.io_callback(host, None, *dyn, ordered=False)


def _quiet_model_errors(record):
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, ModelError)


# the error is re-raised as the ppl error by the staged call (or the debug block): no log noise
logging.getLogger("jax._src.callback").addFilter(_quiet_model_errors)


def _integral(v, flag) -> bool:
    """Whether ``v`` holds whole numbers wherever ``flag`` (a prefix-shaped mask) is true."""
    v, flag = np.asarray(v), np.asarray(flag, dtype=bool)
    flag = np.reshape(flag, flag.shape + (1,) * (v.ndim - flag.ndim)) if flag.ndim else flag
    return bool(np.all((v == np.round(v)) | ~flag))


def _integer_callback(v, message):
    if not np.all(np.asarray(v) == np.round(np.asarray(v))):
        raise_from_callback(ShapeError(message))


def _check_finite_callback(lp, constrained, present, v, message):
    lp = np.asarray(lp)
    present = np.broadcast_to(np.asarray(present, dtype=bool), lp.shape)
    v = np.asarray(v)
    if v.dtype.kind == "f":
        nan_v = np.isnan(v)
        nan_v = np.any(nan_v.reshape(lp.shape + (-1,)), axis=-1) if v.ndim > lp.ndim else nan_v
        if np.any(nan_v & present):
            raise_from_callback(NonFiniteError(
                f"{message}: the value there is NaN (debug-mode run-time check); mark missing "
                "observations with ppl.Masked(values, observed_flags) instead of NaN."
            ))
    bad = np.isnan(lp) | (lp == np.inf)
    bad |= (lp == -np.inf) & ~np.broadcast_to(np.asarray(constrained, dtype=bool), lp.shape)
    bad &= present
    if np.any(bad):
        what = "NaN or +inf" if not np.any((lp == -np.inf) & bad) else "-inf at a sampled value"
        raise_from_callback(NonFiniteError(
            f"{message}: {what}, got {lp[bad].ravel()[:5]} (debug-mode run-time check). A log density "
            "of -inf is allowed only at a given (constrained) value, where it means zero likelihood."
        ))


# ------------------------------------------------------------------ values known at trace time
# GFI calls are staged with jax.jit, so even a constant written in a model (jnp.array(-1.0)) is a
# tracer when the distribution is built. The tracer still records how it was made: a constant,
# or a primitive applied to other tracers. _known_value folds such constant expressions (bounded
# in depth and size) so that invalid constant parameters are reported at trace time. It relies on
# JAX's jaxpr tracer internals and returns None (unknown) whenever anything is unexpected.
_FOLD_MAX_DEPTH = 64
_FOLD_MAX_NODES = 256  # per parameter: bounds trace-time cost for values that are not constant
_FOLD_MAX_SIZE = 1 << 16


def _known_value(x):
    """The value of ``x`` if it is known at trace time (a constant expression), else None."""
    if not isinstance(x, jax.core.Tracer):
        return x
    try:
        with jax.ensure_compile_time_eval():
            v = _fold(x, {}, 0)
        return None if v is None else np.asarray(v)
    except Exception:  # internals differ in this JAX version, or evaluation failed: unknown
        return None


def _fold(t, memo, depth):
    if not isinstance(t, jax.core.Tracer):
        return t
    if id(t) in memo:
        return memo[id(t)][1]
    memo[id(t)] = (t, None)  # (keeps t alive so its id is not reused during the fold)
    if len(memo) > _FOLD_MAX_NODES:
        return None
    get_const = getattr(t, "get_const", None)
    if get_const is None or depth > _FOLD_MAX_DEPTH or int(np.prod(t.shape)) > _FOLD_MAX_SIZE:
        return None
    c = get_const()
    if c is not None:
        memo[id(t)] = (t, c)
        return c
    eqn = getattr(t, "parent", None)
    if eqn is None or eqn.effects:
        return None
    ins = []
    for u in eqn.in_tracers:
        v = _fold(u, memo, depth + 1)
        if v is None:
            return None
        ins.append(v)
    outs = eqn.primitive.bind(*ins, **eqn.params)
    if eqn.primitive.multiple_results:
        idx = [i for i, var in enumerate(eqn.outvars) if var is t.val]
        if len(idx) != 1:
            return None
        outs = outs[idx[0]]
    if isinstance(outs, jax.core.Tracer):
        return None
    memo[id(t)] = (t, outs)
    return outs


@dataclasses.dataclass(frozen=True, eq=True)
class DistributionGF(GenerativeFunction):
    """A numpyro distribution family as a generative function.

    ``builder(*args)`` returns the numpyro distribution; arguments given by keyword at the call
    site (``bernoulli(logits=x)``) are passed by keyword. ``estimator`` is the gradient-estimation
    strategy requested for this site inside variational programs (see ``inference.vi``).

    Example:
        >>> import jax
        >>> tr = normal.simulate(jax.random.key(0), 0.0, 2.0)
        >>> lp, v = normal.assess(tr.choices, 0.0, 2.0)
        >>> bool(lp == tr.score)
        True
    """

    name: str
    builder: Callable = None
    kw_names: tuple = ()
    estimator: Any = None

    def __call__(self, *args, estimator=None, **kwargs):
        gf = self
        if kwargs or estimator is not None:
            gf = dataclasses.replace(self, kw_names=tuple(kwargs), estimator=estimator)
        return Invocation(gf, args + tuple(kwargs.values()))

    # -- numpyro distribution -------------------------------------------------------------------
    def make(self, args):
        """Build the numpyro distribution for ``args``, validating its parameters."""
        n_kw = len(self.kw_names)
        pos = args[: len(args) - n_kw] if n_kw else args
        kw = dict(zip(self.kw_names, args[len(args) - n_kw :])) if n_kw else {}
        path = current_path()
        try:
            d = self.builder(*pos, **kw)
        except (ValueError, TypeError) as e:
            raise ParameterError(
                f"{self.name} at address {fmt_addr(path)}: cannot build the distribution from "
                f"its arguments ({e}); check the parameter names and shapes (numpyro's "
                f"{getattr(self.builder, '__name__', self.name)} signature)."
            ) from e
        self._validate(d, path, pos, kw)
        return d

    def _validate(self, d, path, pos=(), kw=None):
        extra = _FAMILY_CHECKS.get(type(d))
        if extra is not None:
            for check, v, msg in extra(d, pos, kw or {}):
                self._check(check, v, f"invalid parameters for {self.name} at address {fmt_addr(path)}: {msg}")
        for pname, constraint in getattr(d, "arg_constraints", {}).items():
            try:
                v = getattr(d, pname)
            except Exception:
                continue
            if v is None or isinstance(constraint, type(nd.constraints.dependent)):
                continue
            if pname == "logits":  # -inf logits are a common way to rule categories out
                constraint = _LOGITS
            msg = (
                f"invalid parameter {pname} for {self.name} at address {fmt_addr(path)}: it must "
                f"satisfy {_describe_constraint(constraint)}"
            )
            self._check(constraint, v, msg)

    @staticmethod
    def _check(constraint, v, msg):
        """Raise now if ``constraint(v)`` is known to fail at trace time; in debug mode add a
        run-time check for traced values."""
        known = _known_value(v)
        if known is None and not STATE.debug:
            return  # traced values are checked at run time only in debug mode
        try:
            if known is not None:
                with jax.ensure_compile_time_eval():
                    ok = np.asarray(constraint(known))
            else:
                ok = constraint(v)
        except Exception:
            return
        present = concrete_bool(ok)
        if present is False or (present is None and not isinstance(ok, jax.core.Tracer)):
            raise ParameterError(f"{msg}, got {_show(known)}. Fix the value or the computation producing it.")
        if present is None and STATE.debug:
            debug_check(_raise_in_callback, ok, v, msg)

    def draw(self, d, key):
        """Draw a value from numpyro distribution ``d`` (no interception; plain or lane key)."""
        return keys.draw(d, key)

    def _sample(self, d, key):
        path = current_path()
        icpt = active_interceptor(path)
        if icpt is not None:
            return icpt.sample(path, self, d, keys.raw(key))
        return self.draw(d, key)

    def _log_prob_elems(self, d, v, constrained=False, present=True):
        """Elementwise log density. In debug mode, NaN and +inf are errors, and so is -inf at a
        freshly sampled value; -inf at a given (``constrained``: bool or mask over the batch
        dimensions) value is a legitimate zero likelihood (e.g. a particle that SMC will drop).
        Entries outside ``present`` (masked-out placeholders) are not checked."""
        lp = d.log_prob(v)
        if STATE.debug:
            msg = f"non-finite log density at address {fmt_addr(current_path())} ({self.name})"

            def on_batch(m):
                m = jnp.asarray(m, dtype=bool)
                return jnp.reshape(m, m.shape + (1,) * (jnp.ndim(lp) - m.ndim)) if m.ndim else m

            debug_check(_check_finite_callback, lp, on_batch(constrained), on_batch(present), v, msg)
        return lp

    def _log_prob(self, d, v, constrained=False):
        return jnp.sum(self._log_prob_elems(d, v, constrained))

    def _coerce(self, d, value):
        """Check a given value's shape and dtype against the site; never broadcast."""
        path = current_path()
        try:
            arr = jnp.asarray(value)
        except TypeError as e:
            raise ShapeError(
                f"the value given at address {fmt_addr(path)} ({type(value).__name__}) is not an array: {e}"
            ) from e
        expected = tuple(d.batch_shape) + tuple(d.event_shape)
        if tuple(arr.shape) != expected:
            hint = ""
            if arr.size == int(np.prod(expected)):
                hint = f" Reshape it with .reshape({expected}); values are never broadcast."
            raise ShapeError(
                f"the value at address {fmt_addr(path)} has shape {tuple(arr.shape)}, but the "
                f"{self.name} site there has shape {expected} (batch {tuple(d.batch_shape)} + "
                f"event {tuple(d.event_shape)}).{hint}"
            )
        target = _sample_dtype(d)
        kind = arr.dtype.kind
        if kind not in "biuf" or (kind == "b" and jnp.issubdtype(target, jnp.floating)):
            raise ShapeError(
                f"the value at address {fmt_addr(path)} has dtype {arr.dtype}, which {self.name} "
                f"cannot take; pass {jnp.dtype(target).name} values."
            )
        if kind == "f" and jnp.issubdtype(target, jnp.integer):
            msg = (f"the value at address {fmt_addr(path)} has non-integer entries but {self.name} "
                   f"is a discrete distribution with {jnp.dtype(target).name} values; pass whole "
                   "numbers (e.g. 0 or 1 for flip/bernoulli), not probabilities.")
            known = _known_value(arr)
            if known is not None:
                if not _integral(known, True):
                    raise ShapeError(f"{msg} Got {_show(known)}.")
            else:  # a given value is data: checked after the top-level call (and in debug mode)
                defer_value_check(_integral, msg)
                if STATE.debug:
                    debug_check(_integer_callback, arr, msg)
        return arr.astype(target)

    def _observe(self, d, value, old_value):
        path = current_path()
        icpt = active_interceptor(path)
        if icpt is not None:
            return icpt.observe(path, self, d, value, old_value)
        return value, 0.0, old_value

    def _observe_given(self, d, given, old_value):
        """Coerce and observe an unmasked given value. An interceptor with ``raw_values = True``
        receives the value as given (e.g. unconstrained, possibly of another shape) and the value
        it returns for the trace is coerced instead."""
        path = current_path()
        icpt = active_interceptor(path)
        if icpt is not None and getattr(icpt, "raw_values", False):
            v, extra, dv = icpt.observe(path, self, d, given, given if old_value is None else old_value)
            return self._coerce(d, v), extra, dv
        v = self._coerce(d, given)
        return self._observe(d, v, v if old_value is None else old_value)

    def _masked_flag(self, d, flag):
        flag = jnp.asarray(flag, dtype=bool)
        if flag.ndim > len(d.batch_shape) or tuple(d.batch_shape[: flag.ndim]) != tuple(flag.shape):
            raise ShapeError(
                f"the mask at address {fmt_addr(current_path())} has shape {flag.shape}, which is "
                f"not a prefix of the site's batch shape {tuple(d.batch_shape)}"
            )
        return flag

    def _masked_value(self, d, masked, other):
        """Combine a masked constraint with ``other`` values: (value, flag_on_batch_dims)."""
        flag = self._masked_flag(d, masked.flag)
        v = self._coerce(d, masked.value)
        full = jnp.reshape(flag, flag.shape + (1,) * (v.ndim - flag.ndim))
        return jnp.where(full, v, other), flag

    @staticmethod
    def _masked_sum(lp_elems, flag):
        f = jnp.reshape(flag, flag.shape + (1,) * (lp_elems.ndim - flag.ndim))
        return jnp.sum(jnp.where(f, lp_elems, 0.0))

    def _given(self, choices: ChoiceMap):
        if choices.child_names() and not choices.is_empty():
            raise AddressError(
                f"address {fmt_addr(current_path())} is a {self.name} site, but nested addresses "
                f"{list(choices.child_names())} were given under it; give one value there."
            )
        return choices.raw_value()

    # -- GFI ------------------------------------------------------------------------------------
    def _simulate(self, key, *args):
        d = self.make(args)
        v = self._sample(d, key)
        return DistTrace(self, pack_args(args), v, self._log_prob(d, v))

    def _assess(self, choices, *args):
        d = self.make(args)
        given = self._given(choices)
        if given is None:
            raise AddressError(
                f"assess: no value for address {fmt_addr(current_path())} ({self.name}); assess "
                "needs every choice of the model. Use generate to sample missing choices."
            )
        if isinstance(given, Masked):
            v = self._coerce(d, given.value)
            flag = self._masked_flag(d, given.flag)
            v, _, _ = self._observe(d, v, v)
            return self._masked_sum(self._log_prob_elems(d, v, True, flag), flag), v
        v, extra, _ = self._observe_given(d, given, None)
        return self._log_prob(d, v, True) + extra, v

    def _generate(self, key, constraints, *args):
        d = self.make(args)
        given = self._given(constraints)
        if given is None:
            v = self._sample(d, key)
            return DistTrace(self, pack_args(args), v, self._log_prob(d, v)), jnp.zeros(())
        if isinstance(given, Masked):
            fresh = self._sample(d, key)
            v, flag = self._masked_value(d, given, fresh)
            v, extra, _ = self._observe(d, v, fresh)
            lp = self._log_prob_elems(d, v, flag)
            return DistTrace(self, pack_args(args), v, jnp.sum(lp)), self._masked_sum(lp, flag) + extra
        v, extra, _ = self._observe_given(d, given, None)
        lp = self._log_prob(d, v, True)
        return DistTrace(self, pack_args(args), v, lp), lp + extra

    def _update(self, key, trace, constraints, *args):
        # the kept old value is like a given one under the new arguments: -inf is a zero density
        d = self.make(args)
        given = self._given(constraints)
        old = trace.value
        if given is None:
            lp = self._log_prob(d, old, True)
            return DistTrace(self, pack_args(args), old, lp), lp - trace.score, ChoiceMap.empty()
        if isinstance(given, Masked):
            v, flag = self._masked_value(d, given, old)
            v, extra, dv = self._observe(d, v, old)
            lp = self._log_prob(d, v, True)
            discard = ChoiceMap.value(Masked(dv, flag))
            return DistTrace(self, pack_args(args), v, lp), lp + extra - trace.score, discard
        v, extra, dv = self._observe_given(d, given, old)
        lp = self._log_prob(d, v, True)
        return DistTrace(self, pack_args(args), v, lp), lp + extra - trace.score, ChoiceMap.value(dv)

    def _regenerate(self, key, trace, selection, *args):
        d = self.make(args)
        old = trace.value
        if selection.has_root():
            v = self._sample(d, key)
            lp = self._log_prob(d, v)
            return DistTrace(self, pack_args(args), v, lp), jnp.zeros(()), ChoiceMap.value(old)
        lp = self._log_prob(d, old, True)
        return DistTrace(self, pack_args(args), old, lp), lp - trace.score, ChoiceMap.empty()

    def __repr__(self):
        return f"<distribution {self.name}>"


def _show(v) -> str:
    arr = np.asarray(v)
    return np.array2string(arr, precision=4, threshold=20) if arr.ndim else str(arr)


class _FiniteLogits:
    """Logits may be -inf (a category ruled out) but not NaN or +inf."""

    def __call__(self, x):
        return jnp.all(~jnp.isnan(x) & (x != jnp.inf), axis=-1)

    def describe(self):
        return "no NaN or +inf entries (-inf rules a category out)"


_LOGITS = _FiniteLogits()


def _uniform_checks(d, pos, kw):
    return [(lambda width: width > 0, d.high - d.low, "low must be less than high, i.e. high - low > 0")]


def _positive_definite(m):
    m = jnp.asarray(m)
    sym = jnp.all(jnp.abs(m - jnp.swapaxes(m, -1, -2)) <= 1e-6 * (1.0 + jnp.abs(m)), axis=(-2, -1))
    return sym & jnp.all(jnp.linalg.eigvalsh(m) > 0, axis=-1)


def _mv_normal_checks(d, pos, kw):
    out = []
    for i, name in ((1, "covariance_matrix"), (2, "precision_matrix")):
        m = kw.get(name, pos[i] if len(pos) > i else None)
        if m is not None:
            out.append((_positive_definite, m, f"{name} must be symmetric positive definite"))
    return out


# checks numpyro's arg_constraints do not express (or express only on derived parameters)
_FAMILY_CHECKS = {nd.Uniform: _uniform_checks, nd.MultivariateNormal: _mv_normal_checks}


def _describe_constraint(c) -> str:
    if hasattr(c, "describe"):
        return c.describe()
    name = type(c).__name__.lstrip("_")
    extras = []
    for attr in ("lower_bound", "upper_bound"):
        if hasattr(c, attr):
            extras.append(f"{attr}={np.asarray(getattr(c, attr)).tolist()}")
    return name + (f"({', '.join(extras)})" if extras else "")


@dataclasses.dataclass(frozen=True)
class _TreedefBuilder:
    treedef: Any

    def __call__(self, *leaves):
        return self.treedef.unflatten(leaves)


def dist(d: nd.Distribution) -> Invocation:
    """Use any numpyro distribution at a site: ``ppl.dist(numpyro.distributions.StudentT(3.0)) @ "x"``.

    Example:
        >>> import jax, numpyro.distributions as nd, ppl
        >>> @ppl.gen
        ... def model():
        ...     return ppl.dist(nd.StudentT(3.0)) @ "x"
        >>> model.simulate(jax.random.key(0)).choices["x"].shape
        ()
    """
    if not isinstance(d, nd.Distribution):
        raise TypeError(f"ppl.dist expects a numpyro distribution instance, got {type(d).__name__}")
    leaves, treedef = jax.tree_util.tree_flatten(d)
    gf = DistributionGF(type(d).__name__, _TreedefBuilder(treedef))
    return Invocation(gf, tuple(leaves))


def _flip(p):
    return nd.Bernoulli(probs=p)


normal = DistributionGF("normal", nd.Normal)
half_normal = DistributionGF("half_normal", nd.HalfNormal)
log_normal = DistributionGF("log_normal", nd.LogNormal)
gamma = DistributionGF("gamma", nd.Gamma)
inverse_gamma = DistributionGF("inverse_gamma", nd.InverseGamma)
beta = DistributionGF("beta", nd.Beta)
exponential = DistributionGF("exponential", nd.Exponential)
uniform = DistributionGF("uniform", nd.Uniform)
student_t = DistributionGF("student_t", nd.StudentT)
cauchy = DistributionGF("cauchy", nd.Cauchy)
laplace = DistributionGF("laplace", nd.Laplace)
dirichlet = DistributionGF("dirichlet", nd.Dirichlet)
mv_normal = DistributionGF("mv_normal", nd.MultivariateNormal)
bernoulli = DistributionGF("bernoulli", nd.Bernoulli)
flip = DistributionGF("flip", _flip)
binomial = DistributionGF("binomial", nd.Binomial)
poisson = DistributionGF("poisson", nd.Poisson)
categorical = DistributionGF("categorical", nd.Categorical)
geometric = DistributionGF("geometric", nd.Geometric)
