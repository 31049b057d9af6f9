"""Distributions as generative functions: thin wrappers over ``numpyro.distributions``.

Each wrapper takes the numpyro constructor's parameters, with the same names and positional
order (``normal(loc, scale)``, ``gamma(concentration, rate)``, ``bernoulli(probs=...)`` or
``bernoulli(logits=...)``). A site may hold an array (batched parameters): its log density is the
sum over the whole array in every GFI method. Any numpyro distribution can be used at a site
with :func:`dist`. Densities and samplers are numpyro's; nothing is re-implemented here.

Examples:
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
from typing import Any, Callable

import jax
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
    trace_dataclass,
)
from .dist_checks import (
    FAMILY_CHECKS,
    LOGITS,
    _check_finite_callback,
    _integer_callback,
    _integral,
    _raise_in_callback,
    debug_check,
    describe_constraint,
    known_value,
    show_value,
)
from .errors import AddressError, ParameterError, ShapeError, fmt_addr
from .lru import LRUCache
from .densities import log_density
from .scores import take_sink
from .sites import deterministic_view

# machinery here; the named families (normal, gamma, ...) live in ppl.families, re-exported below
__all__ = ["DistributionGF", "DistTrace", "dist", "debug_check"]


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
        if deterministic_view():  # ppl.sites.deterministics(trace): only deterministic sites show
            return ChoiceMap.empty()
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



#: (constraint, type, Python constant) known to satisfy the constraint
_KNOWN_OK = LRUCache(4096)


@dataclasses.dataclass(frozen=True, eq=True)
class DistributionGF(GenerativeFunction):
    """A numpyro distribution family as a generative function.

    ``builder(*args)`` returns the numpyro distribution; arguments given by keyword at the call
    site (``bernoulli(logits=x)``) are passed by keyword. ``estimator`` is the gradient-estimation
    strategy requested for this site inside variational programs (see ``inference.vi``).

    Examples:
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
            if self.builder is nd.Normal and "validate_args" not in kw:
                # no constructor checks (dead ops per site when the parameters are traced): the
                # parameters are checked below with the address; log_prob keeps numpyro's default
                # support check
                d = nd.Normal(*pos, **kw, validate_args=False)
                del d._validate_args
            else:
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
        base = getattr(d, "base_dist", None)  # truncated, zero-inflated, expanded, ... families
        if isinstance(base, nd.Distribution):
            self._validate(base, path)
        extra = FAMILY_CHECKS.get(type(d))
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
                constraint = LOGITS
            def msg(pname=pname, constraint=constraint):
                return (f"invalid parameter {pname} for {self.name} at address {fmt_addr(path)}: it "
                        f"must satisfy {describe_constraint(constraint)}")

            self._check(constraint, v, msg)

    @staticmethod
    def _check(constraint, v, msg):
        """Raise now if ``constraint(v)`` is known to fail at trace time; in debug mode add a
        run-time check for traced values."""
        known = known_value(v)
        if known is None and not STATE.debug:
            return  # traced values are checked at run time only in debug mode
        memo = None
        if type(known) in (float, int, bool):  # a Python constant (e.g. scale 1.0): checked once
            memo = (constraint, type(known), known)
            try:
                if memo in _KNOWN_OK:
                    return
            except TypeError:
                memo = None
        msg = msg() if callable(msg) else msg
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
            raise ParameterError(f"{msg}, got {show_value(known)}. Fix the value or the computation producing it.")
        if present is None and STATE.debug:
            debug_check(_raise_in_callback, ok, v, msg)
        elif present is True and memo is not None:
            _KNOWN_OK[memo] = True

    def draw(self, d, key):
        """Draw a value from numpyro distribution ``d`` (no interception; plain or lane key)."""
        try:
            return keys.draw(d, key)
        except ValueError as e:  # e.g. a traced multinomial total_count without total_count_max
            raise ParameterError(
                f"{self.name} at address {fmt_addr(current_path())}: numpyro cannot sample it ({e}). "
                "Pass the parameters it needs as Python numbers (static), or the keyword numpyro asks for."
            ) from e

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
        lp = log_density(d, v)
        if STATE.debug:
            msg = f"non-finite log density at address {fmt_addr(current_path())} ({self.name})"

            def on_batch(m):
                m = jnp.asarray(m, dtype=bool)
                return jnp.reshape(m, m.shape + (1,) * (jnp.ndim(lp) - m.ndim)) if m.ndim else m

            debug_check(_check_finite_callback, lp, on_batch(constrained), on_batch(present), v, msg)
        return lp

    def _log_prob(self, d, v, constrained=False):
        sink = take_sink()  # a site of a @gen execution: maybe computed with its other sites
        if sink is not None:
            lp = sink.defer(d, v)
            if lp is not None:
                return lp
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
            known = known_value(arr)
            if known is not None:
                if not _integral(known, True):
                    raise ShapeError(f"{msg} Got {show_value(known)}.")
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

    def _update(self, key, trace, constraints, *args, _same_params=False):
        # the kept old value is like a given one under the new arguments: -inf is a zero density
        d = self.make(args)
        given = self._given(constraints)
        old = trace.value
        if _same_params and given is not None and not isinstance(given, Masked):
            # (ppl.changes) the value goes to an interceptor that keeps it, and the parameters are
            # unchanged: the old log density still holds
            v, extra, dv = self._observe_given(d, given, old)
            return DistTrace(self, pack_args(args), v, trace.score), extra, ChoiceMap.value(dv)
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


@dataclasses.dataclass(frozen=True)
class _TreedefBuilder:
    treedef: Any

    def __call__(self, *leaves):
        return self.treedef.unflatten(leaves)


def dist(d: nd.Distribution) -> Invocation:
    """Use any numpyro distribution at a site: ``ppl.dist(numpyro.distributions.StudentT(3.0)) @ "x"``.

    Examples:
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


# the named families (ppl.families: add a new family there, not here); imported last, since they are
# DistributionGF instances built from this module
from . import families as _families  # noqa: E402
from .families import *  # noqa: E402,F401,F403

__all__ += list(_families.__all__)
