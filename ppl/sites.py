"""Sites that are not random choices: ``ppl.factor`` and ``ppl.deterministic``.

``ppl.factor(log_weight) @ "name"`` adds ``log_weight`` (a scalar, or an array that is summed) to
the model's log density at ``"name"``. It makes no choice: it is in the score, in
``trace.get_scores()`` at its address, and so in every weight (importance weights, MH ratios, HMC
log densities, ELBOs), but never in ``trace.get_choices()``. Use it for likelihoods that are not
a distribution, soft constraints, or tempering (``ppl.factor(beta * loglik) @ "lik"``).

``ppl.deterministic(value) @ "name"`` records a value computed from the choices (and returns it).
Its score is 0 and it is **not a choice**: it lives beside the choice map, read with
:func:`deterministics` (``ppl.deterministics(trace)``, a :class:`ppl.ChoiceMap` with the same
nesting as choices: combinators stack or mask it like choices). Because it is never in
``get_choices()``, no selection, kernel, guide or constraint map can contain it by accident:
``select_all``, HMC, autoguides and ``assess(trace.choices)`` are unaffected, and every
``update``/``regenerate`` recomputes it from the other choices.

Neither site can be constrained: a value for it in the constraints of ``generate``/``update``
(or the choices of ``assess``) raises an :class:`ppl.AddressError` naming the address.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model(beta):
    ...     mu = ppl.normal(0.0, 1.0) @ "mu"
    ...     ppl.deterministic(2.0 * mu) @ "two_mu"
    ...     ppl.factor(beta * -0.5 * (mu - 1.0) ** 2) @ "lik"
    >>> tr = model.simulate(jax.random.key(0), 0.5)
    >>> tr.choices.addresses(), ppl.deterministics(tr).addresses()
    (['mu'], ['two_mu'])
    >>> bool(jnp.isclose(ppl.deterministics(tr)["two_mu"], 2.0 * tr.choices["mu"]))
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

import jax.numpy as jnp
import numpy as np

from .choicemap import ChoiceMap
from .core import (
    STATE,
    GenerativeFunction,
    Invocation,
    Trace,
    current_path,
    pack_args,
    raise_from_callback,
    trace_dataclass,
)
from .errors import AddressError, NonFiniteError, ParameterError, fmt_addr

__all__ = ["factor", "deterministic", "deterministics", "FactorGF", "DeterministicGF", "FactorTrace",
           "DeterministicTrace", "deterministic_view"]


# ------------------------------------------------------------------ the deterministic view
class _View(threading.local):
    def __init__(self):
        self.deterministic = 0


_VIEW = _View()


def deterministic_view() -> bool:
    """Whether ``get_choices()`` currently reports deterministic sites instead of choices (only
    while :func:`deterministics` runs). Trace types whose ``get_choices`` produces leaves itself
    (as ``DistTrace`` does) return an empty map in this view.

    Examples:
        >>> deterministic_view()
        False
    """
    return _VIEW.deterministic > 0


@contextlib.contextmanager
def _deterministic_view():
    _VIEW.deterministic += 1
    try:
        yield
    finally:
        _VIEW.deterministic -= 1


def deterministics(trace) -> ChoiceMap:
    """The values of the ``ppl.deterministic`` sites of ``trace``, as a :class:`ppl.ChoiceMap`
    nested like the choices (under ``ppl.vmap``/``repeat``/``scan`` with the same leading axes, in
    untaken ``cond``/``switch`` branches as ``Masked``). Works on batched traces (e.g. vmapped
    chains) as ``trace.get_choices()`` does. Empty if the model has none.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def step(x):
        ...     y = ppl.normal(x, 1.0) @ "y"
        ...     return ppl.deterministic(y ** 2) @ "y2"
        >>> tr = step.repeat(4).simulate(jax.random.key(0), 0.0)
        >>> ppl.deterministics(tr)["y2"].shape
        (4,)
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"ppl.deterministics expects a trace, got {type(trace).__name__}")
    with _deterministic_view():
        return trace.get_choices()


def _reject_given(given: ChoiceMap, kind: str, how: str):
    if given is not None and not given.is_empty():
        raise AddressError(
            f"address {fmt_addr(current_path())} is a {kind} site, not a random choice: it cannot be "
            f"given a value in constraints or choices. Remove it from the choice map; {how}"
        )


def _as_array(x, what: str):
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise ParameterError(
            f"{what} at address {fmt_addr(current_path())} takes one array, got {type(x).__name__} "
            f"({e}); record each array at its own address."
        ) from e
    return arr


# ------------------------------------------------------------------ factor
@trace_dataclass
class FactorTrace(Trace):
    """Trace of a factor site: its (summed) log weight; no choices."""

    gf: Any
    packed_args: Any
    score: Any

    @property
    def retval(self):
        return None

    def get_choices(self) -> ChoiceMap:
        return ChoiceMap.empty()

    def get_scores(self) -> ChoiceMap:
        return ChoiceMap.value(self.score)

    def strip(self):
        return dataclasses.replace(self, packed_args=None)


def _nonfinite_factor_callback(lw, message):
    lw = np.asarray(lw)
    if np.any(np.isnan(lw) | (lw == np.inf)):
        raise_from_callback(NonFiniteError(
            f"{message}: got {lw[np.isnan(lw) | (lw == np.inf)].ravel()[:5]} (debug-mode run-time check). "
            "A factor may be -inf (an impossible trace) but not NaN or +inf."
        ))


@dataclasses.dataclass(frozen=True, eq=True)
class FactorGF(GenerativeFunction):
    """The generative function behind :func:`factor`: no choices, log density ``sum(log_weight)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> tr = FactorGF().simulate(jax.random.key(0), jnp.array([-1.0, -2.0]))
        >>> float(tr.score)
        -3.0
    """

    name: str = "factor"

    def _log_weight(self, log_weight):
        lw = _as_array(log_weight, "ppl.factor")
        if lw.dtype.kind not in "iuf":
            raise ParameterError(
                f"ppl.factor at address {fmt_addr(current_path())}: the log weight has dtype {lw.dtype}; "
                "pass a real number or array of log weights."
            )
        total = jnp.sum(lw).astype(jnp.result_type(float))
        if STATE.debug:
            from .dist_checks import debug_check

            debug_check(_nonfinite_factor_callback, lw.astype(total.dtype),
                        f"non-finite log weight of ppl.factor at address {fmt_addr(current_path())}")
        return total

    def _reject(self, given):
        _reject_given(given, "ppl.factor", "a factor's log weight is computed by the model.")

    def _simulate(self, key, log_weight):
        return FactorTrace(self, pack_args((log_weight,)), self._log_weight(log_weight))

    def _assess(self, choices, log_weight):
        self._reject(choices)
        return self._log_weight(log_weight), None

    def _generate(self, key, constraints, log_weight):
        self._reject(constraints)
        lw = self._log_weight(log_weight)
        return FactorTrace(self, pack_args((log_weight,)), lw), lw

    def _update(self, key, trace, constraints, log_weight):
        self._reject(constraints)
        lw = self._log_weight(log_weight)
        return FactorTrace(self, pack_args((log_weight,)), lw), lw - trace.score, ChoiceMap.empty()

    def _regenerate(self, key, trace, selection, log_weight):
        lw = self._log_weight(log_weight)
        return FactorTrace(self, pack_args((log_weight,)), lw), lw - trace.score, ChoiceMap.empty()

    def __repr__(self):
        return "<ppl.factor>"


_FACTOR = FactorGF()


def factor(log_weight) -> Invocation:
    """Add ``log_weight`` (summed if an array) to the model's log density: ``ppl.factor(lw) @ "name"``.

    The site makes no choice; its log weight is in ``trace.score`` and in ``trace.get_scores()``
    at ``"name"``, hence in every inference weight. ``-inf`` makes the trace impossible; NaN and
    ``+inf`` raise a :class:`ppl.NonFiniteError` under ``ppl.debug()``. Returns ``None``.

    Example (a tempered likelihood: ``beta = 0`` gives the prior, ``beta = 1`` the posterior):
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def tempered(beta, ys):
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     loglik = jnp.sum(-0.5 * (ys - mu) ** 2)
        ...     ppl.factor(beta * loglik) @ "lik"
        >>> tr, w = tempered.generate(jax.random.key(0), ppl.ChoiceMap({"mu": 0.0}), 0.5, jnp.ones(3))
        >>> float(tr.get_scores()["lik"])
        -0.75
    """
    return Invocation(_FACTOR, (log_weight,))


# ------------------------------------------------------------------ deterministic
@trace_dataclass
class DeterministicTrace(Trace):
    """Trace of a deterministic site: the recorded value, score 0, no choices (the value is in
    :func:`deterministics`, not in ``get_choices()``)."""

    gf: Any
    packed_args: Any
    recorded: Any
    score: Any

    @property
    def retval(self):
        return self.recorded

    def get_choices(self) -> ChoiceMap:
        if deterministic_view():
            return ChoiceMap.value(self.recorded)
        return ChoiceMap.empty()

    def get_scores(self) -> ChoiceMap:
        return ChoiceMap.empty()

    def strip(self):
        return dataclasses.replace(self, packed_args=None)


@dataclasses.dataclass(frozen=True, eq=True)
class DeterministicGF(GenerativeFunction):
    """The generative function behind :func:`deterministic`: records its argument, score 0.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> tr = DeterministicGF().simulate(jax.random.key(0), jnp.arange(3))
        >>> tr.retval.tolist(), float(tr.score)
        ([0, 1, 2], 0.0)
    """

    name: str = "deterministic"

    def _trace(self, value):
        v = _as_array(value, "ppl.deterministic")
        return DeterministicTrace(self, pack_args((value,)), v, jnp.zeros((), jnp.result_type(float)))

    def _reject(self, given):
        _reject_given(given, "ppl.deterministic",
                      "its value is recomputed from the other choices (to condition on a function of "
                      "the choices, add a ppl.factor).")

    def _simulate(self, key, value):
        return self._trace(value)

    def _assess(self, choices, value):
        self._reject(choices)
        return jnp.zeros((), jnp.result_type(float)), _as_array(value, "ppl.deterministic")

    def _generate(self, key, constraints, value):
        self._reject(constraints)
        tr = self._trace(value)
        return tr, jnp.zeros_like(tr.score)

    def _update(self, key, trace, constraints, value):
        self._reject(constraints)
        tr = self._trace(value)
        return tr, jnp.zeros_like(tr.score), ChoiceMap.empty()

    def _regenerate(self, key, trace, selection, value):
        tr = self._trace(value)
        return tr, jnp.zeros_like(tr.score), ChoiceMap.empty()

    def __repr__(self):
        return "<ppl.deterministic>"


_DETERMINISTIC = DeterministicGF()


def deterministic(value) -> Invocation:
    """Record ``value`` (an array computed from the choices) at an address and return it:
    ``y = ppl.deterministic(f(x)) @ "y"``.

    It is not a choice: read it with :func:`deterministics`; ``update``/``regenerate`` and every
    MCMC move recompute it from the other choices; it cannot be constrained.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     log_s = ppl.normal(0.0, 1.0) @ "log_s"
        ...     return ppl.deterministic(jax.numpy.exp(log_s)) @ "s"
        >>> tr = model.simulate(jax.random.key(0))
        >>> bool(tr.retval == ppl.deterministics(tr)["s"]), "s" in tr.choices.addresses()
        (True, False)
    """
    return Invocation(_DETERMINISTIC, (value,))
