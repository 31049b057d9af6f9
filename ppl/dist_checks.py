"""Parameter and value checks of distribution sites (used by :mod:`ppl.distributions`).

- trace-time checks of parameters whose values are known while tracing (:func:`known_value` folds
  constant expressions written with ``jnp``);
- run-time host checks in debug mode (:func:`debug_check`), with the callbacks that raise the ppl
  error naming the address;
- family-specific parameter checks numpyro's ``arg_constraints`` do not express:
  :data:`FAMILY_CHECKS` maps a numpyro distribution class to ``check(d, pos, kw)`` returning
  ``[(predicate, value, message)]`` (add one with :func:`register_family_check`).

Examples:
    >>> import jax.numpy as jnp
    >>> int(known_value(jnp.float32(2.0) + 1.0))
    3
"""

from __future__ import annotations

import logging

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

from .core import STATE, raise_from_callback
from .errors import ModelError, NonFiniteError, ParameterError, ShapeError

__all__ = ["debug_check", "known_value", "FAMILY_CHECKS", "register_family_check", "describe_constraint",
           "show_value", "LOGITS", "positive_definite"]

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

    Examples:
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
# or a primitive applied to other tracers. known_value folds such constant expressions (bounded
# in depth and size) so that invalid constant parameters are reported at trace time. It relies on
# JAX's jaxpr tracer internals and returns None (unknown) whenever anything is unexpected.
_FOLD_MAX_DEPTH = 64
_FOLD_MAX_NODES = 256  # per parameter: bounds trace-time cost for values that are not constant
_FOLD_MAX_SIZE = 1 << 16


def _np_broadcast_in_dim(x, shape, broadcast_dimensions, **_):
    x = np.asarray(x)
    expanded = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        expanded[d] = x.shape[i]
    return np.broadcast_to(x.reshape(expanded), shape)


# the primitives that build constants (jnp.zeros, jnp.full, casts, reshapes) folded with numpy:
# binding them eagerly would compile one tiny XLA program per primitive and shape while tracing
_NUMPY_RULES = {
    "broadcast_in_dim": _np_broadcast_in_dim,
    "convert_element_type": lambda x, new_dtype, **_: np.asarray(x).astype(new_dtype),
    "reshape": lambda x, new_sizes, dimensions=None, **_: (
        np.reshape(np.asarray(x), new_sizes) if dimensions is None else None),
}


def known_value(x):
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
    rule = _NUMPY_RULES.get(eqn.primitive.name)
    outs = rule(*ins, **eqn.params) if rule is not None else eqn.primitive.bind(*ins, **eqn.params)
    if eqn.primitive.multiple_results:
        idx = [i for i, var in enumerate(eqn.outvars) if var is t.val]
        if len(idx) != 1:
            return None
        outs = outs[idx[0]]
    if isinstance(outs, jax.core.Tracer):
        return None
    memo[id(t)] = (t, outs)
    return outs



def show_value(v) -> str:
    arr = np.asarray(v)
    return np.array2string(arr, precision=4, threshold=20) if arr.ndim else str(arr)


class _FiniteLogits:
    """Logits may be -inf (a category ruled out) but not NaN or +inf."""

    def __call__(self, x):
        return jnp.all(~jnp.isnan(x) & (x != jnp.inf), axis=-1)

    def describe(self):
        return "no NaN or +inf entries (-inf rules a category out)"


LOGITS = _FiniteLogits()


def _uniform_checks(d, pos, kw):
    return [(lambda width: width > 0, d.high - d.low, "low must be less than high, i.e. high - low > 0")]


def positive_definite(m):
    m = jnp.asarray(m)
    sym = jnp.all(jnp.abs(m - jnp.swapaxes(m, -1, -2)) <= 1e-6 * (1.0 + jnp.abs(m)), axis=(-2, -1))
    return sym & jnp.all(jnp.linalg.eigvalsh(m) > 0, axis=-1)


def _mv_normal_checks(d, pos, kw):
    out = []
    for i, name in ((1, "covariance_matrix"), (2, "precision_matrix")):
        m = kw.get(name, pos[i] if len(pos) > i else None)
        if m is not None:
            out.append((positive_definite, m, f"{name} must be symmetric positive definite"))
    return out


# checks numpyro's arg_constraints do not express (or express only on derived parameters)
FAMILY_CHECKS: dict = {nd.Uniform: _uniform_checks, nd.MultivariateNormal: _mv_normal_checks}


def register_family_check(cls, check):
    """Add ``check(d, pos, kw) -> [(predicate, value, message)]`` for numpyro class ``cls``: each
    ``predicate(value)`` must hold (checked at trace time for known values, at run time under
    ``ppl.debug()``), else a ``ParameterError`` with ``message`` naming the address is raised.

    Examples:
        >>> import numpyro.distributions as nd
        >>> register_family_check(nd.Uniform, FAMILY_CHECKS[nd.Uniform]) is FAMILY_CHECKS[nd.Uniform]
        True
    """
    FAMILY_CHECKS[cls] = check
    return check


def describe_constraint(c) -> str:
    if hasattr(c, "describe"):
        return c.describe()
    name = type(c).__name__.lstrip("_")
    extras = []
    for attr in ("lower_bound", "upper_bound"):
        if hasattr(c, attr):
            extras.append(f"{attr}={np.asarray(getattr(c, attr)).tolist()}")
    return name + (f"({', '.join(extras)})" if extras else "")

