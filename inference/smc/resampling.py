"""Resampling schemes over log weights, each O(N log N) or better.

Every scheme turns ``N`` log weights into ``M`` ancestor indices (``M = N`` by default) whose
offspring counts have expectation ``M * w_i`` (``w`` the normalized weights):

- ``"multinomial"``: ``M`` i.i.d. draws, by sorted uniforms (normalized cumulative sums of
  exponential spacings, O(M)) and an inverse-CDF ``searchsorted``;
- ``"stratified"``: one uniform per stratum ``[(j + U_j) / M]``;
- ``"systematic"``: one shared uniform ``[(j + U) / M]`` (lowest variance in practice);
- ``"residual"``: ``floor(M w_i)`` deterministic copies plus a multinomial draw of the rest.

The schemes live in one registry (name -> function); every function that takes a scheme
(``smc.resample``, ``smc.resample_if``, ``smc.particle_filter``, ``smc.tempered``, ``smc.pmmh``,
``importance.sir``, ...) takes it as ``resampling=`` (default ``"systematic"``) and looks it up
there. :func:`register_resampling` adds a scheme; an unknown name raises
:class:`UnknownResamplingError` listing the registered ones.

:func:`resample_step` is the one resampling step of every SMC algorithm (``smc.resample``,
``smc.resample_if``, the particle filter, tempered SMC, conditional SMC): the ESS test, the
ancestors, the weights reset to zero and the log-evidence bookkeeping (``log_z`` gains
``log mean(w)`` of the weights it resamples; :func:`log_evidence` is the running estimate).

Never ``jax.random.categorical(..., shape=(N,))``, which builds an ``N x N`` Gumbel array.

Weights are handled in log space: ``-inf`` weights (dead particles) are never selected, ``NaN``
weights count as dead, and if every particle is dead the ancestors are the identity and the
``dead`` flag of :func:`log_normalize` says so (no NaN anywhere).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> lw = jnp.log(jnp.array([0.0, 0.5, 0.25, 0.25]))
    >>> resample_indices(jax.random.key(0), lw, "residual").tolist()
    [1, 1, 2, 3]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ppl.errors import ModelError

__all__ = ["SCHEMES", "DEFAULT_RESAMPLING", "UnknownResamplingError", "register_resampling",
           "resampling_schemes", "check_resampling", "resample_indices", "offspring_counts", "log_normalize",
           "ess", "ess_from_normalized", "indices_from_normalized", "invert_cdf", "ResampleStep", "resample_step",
           "log_evidence"]

#: The built-in schemes (see :func:`resampling_schemes` for every registered one).
SCHEMES = ("multinomial", "stratified", "systematic", "residual")

#: The default scheme of every function that takes ``resampling=``.
DEFAULT_RESAMPLING = "systematic"


class UnknownResamplingError(ModelError, ValueError):
    """A resampling scheme name that is not in the registry."""


#: name -> ``fn(key, weights, n_out) -> int32 ancestor indices of shape (n_out,)``
_REGISTRY: dict[str, Callable] = {}
_USED: set = set()  # names looked up by a traced algorithm: their function may not change


def register_resampling(name: str, fn: Callable, *, overwrite: bool = False) -> None:
    """Register ``fn`` as the resampling scheme ``name`` (usable as ``resampling=name`` everywhere).

    ``fn(key, weights, n_out)`` receives a PRNG key, the normalized weights (shape ``(N,)``, summing
    to 1, zero for dead particles; never all zero) and the number of ancestors to draw (a Python
    int), and returns ``n_out`` ancestor indices in ``[0, N)``. It is traced under ``jax.jit``
    with the name as a static argument. For unbiased SMC estimates the offspring counts should
    have expectation ``n_out * w_i``. If every particle is dead, the caller returns the identity
    instead of calling ``fn``. A name already registered is an error unless ``overwrite=True``,
    and replacing a scheme that has already been used is always an error (programs compiled with
    the old function are cached under the name): register a new name instead.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def first_heaviest(key, w, m):   # deterministic toy scheme (not unbiased)
        ...     return jnp.full((m,), jnp.argmax(w), jnp.int32)
        >>> register_resampling("doc-heaviest", first_heaviest, overwrite=True)
        >>> resample_indices(jax.random.key(0), jnp.log(jnp.array([0.2, 0.7, 0.1])), "doc-heaviest").tolist()
        [1, 1, 1]
        >>> "doc-heaviest" in resampling_schemes()
        True
    """
    if not isinstance(name, str) or not name:
        raise UnknownResamplingError(f"register_resampling: the name must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise UnknownResamplingError(
            f"register_resampling: scheme {name!r} must be a function fn(key, weights, n_out) -> indices, "
            f"got {fn!r}.")
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        if name in _USED:
            raise UnknownResamplingError(
                f"register_resampling: scheme {name!r} has already been used, and compiled programs "
                "are cached under its name; register the new function under another name.")
        if not overwrite:
            raise UnknownResamplingError(
                f"register_resampling: scheme {name!r} is already registered; pick another name or pass "
                "overwrite=True.")
    _REGISTRY[name] = fn


def resampling_schemes() -> tuple:
    """Names of every registered resampling scheme (the built-ins first).

    Examples:
        >>> resampling_schemes()[:4]
        ('multinomial', 'stratified', 'systematic', 'residual')
    """
    return tuple(_REGISTRY)


def check_resampling(name, where: str = "resampling") -> str:
    """``name`` if it is a registered scheme, else :class:`UnknownResamplingError` listing them.

    Examples:
        >>> check_resampling("residual")
        'residual'
        >>> try:
        ...     check_resampling("best", "smc.resample")
        ... except UnknownResamplingError as e:
        ...     print(str(e).split(";")[0])
        smc.resample: unknown resampling scheme 'best'
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownResamplingError(
            f"{where}: unknown resampling scheme {name!r}; choose one of {resampling_schemes()} "
            "(e.g. resampling=\"systematic\"), or add one with smc.register_resampling(name, fn).")
    return name


def log_normalize(log_weights):
    """``(normalized log weights, log-sum-exp, dead)`` with NaN treated as ``-inf``.

    ``dead`` is True when every weight is ``-inf``; the normalized weights are then uniform so
    that downstream arithmetic stays finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> lw, lse, dead = log_normalize(jnp.array([-jnp.inf, -jnp.inf]))
        >>> jnp.exp(lw).tolist(), float(lse), bool(dead)
        ([0.5, 0.5], -inf, True)
    """
    lw = jnp.asarray(log_weights)
    lw = jnp.where(jnp.isnan(lw), -jnp.inf, lw)
    lse = jax.nn.logsumexp(lw, axis=-1)
    dead = ~jnp.isfinite(lse)
    n = lw.shape[-1]
    safe = jnp.where(dead[..., None], -jnp.log(float(n)), lw - jnp.where(dead, 0.0, lse)[..., None])
    lse = jnp.where(jnp.isnan(lse), -jnp.inf, lse)
    return safe, lse, dead


def ess(log_weights):
    """Effective sample size ``(sum w)^2 / sum w^2`` from log weights (0 if every particle is dead).

    Examples:
        >>> import jax.numpy as jnp
        >>> float(ess(jnp.zeros(10)))
        10.0
    """
    lw, _, dead = log_normalize(log_weights)
    return jnp.where(dead, 0.0, jnp.exp(-jax.nn.logsumexp(2.0 * lw, axis=-1)))


def _sorted_uniforms(key, m):
    """``m`` sorted Uniform(0, 1) draws in O(m): normalized cumulative exponential spacings."""
    e = jax.random.exponential(key, (m + 1,))
    c = jnp.cumsum(e)
    return c[:-1] / c[-1]


def invert_cdf(cdf_unnorm, u, w):
    """Indices ``i`` with ``cdf[i-1] <= u * total < cdf[i]``, never landing on a zero weight.

    ``cdf_unnorm`` is ``cumsum(w)`` of nonnegative weights ``w`` (not all zero) and ``u`` any
    array of numbers in ``[0, 1)``: the inverse-CDF map that every built-in scheme uses.

    Examples:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([0.5, 0.0, 0.5])
        >>> invert_cdf(jnp.cumsum(w), jnp.array([0.1, 0.5, 0.9]), w).tolist()
        [0, 2, 2]
    """
    n = cdf_unnorm.shape[0]
    total = cdf_unnorm[-1]
    idx = jnp.searchsorted(cdf_unnorm, u * total, side="right")
    last_pos = n - 1 - jnp.argmax((w > 0)[::-1])
    return jnp.minimum(idx, last_pos).astype(jnp.int32)


def resample_indices(key, log_weights, resampling: str = DEFAULT_RESAMPLING, n_out: int | None = None):
    """Ancestor indices (int32, shape ``(n_out,)``) drawn by the scheme ``resampling`` from ``log_weights``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> lw = jnp.log(jnp.array([0.1, 0.0, 0.9]))
        >>> a = resample_indices(jax.random.key(1), lw, "systematic", n_out=10)
        >>> a.shape, int((a == 1).sum())
        ((10,), 0)
    """
    check_resampling(resampling, "resample_indices")
    return _resample_jit(key, log_weights, resampling, None if n_out is None else int(n_out))


@jax.jit(static_argnames=("scheme", "n_out"))
def _resample_jit(key, log_weights, scheme, n_out):
    lw, _, dead = log_normalize(log_weights)
    return indices_from_normalized(key, lw, dead, scheme, n_out)


def indices_from_normalized(key, lw, dead, scheme, n_out=None):
    """:func:`resample_indices` from already normalized log weights and the ``dead`` flag.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> lw, _, dead = log_normalize(jnp.log(jnp.array([0.0, 1.0, 3.0])))
        >>> indices_from_normalized(jax.random.key(0), lw, dead, "residual").tolist()
        [2, 2, 1]
    """
    fn = _REGISTRY[check_resampling(scheme)]
    _USED.add(scheme)
    n = lw.shape[0]
    m = n if n_out is None else int(n_out)
    idx = jnp.asarray(fn(key, jnp.exp(lw), m)).astype(jnp.int32)
    if idx.shape != (m,):
        raise UnknownResamplingError(
            f"resampling scheme {scheme!r} returned indices of shape {idx.shape}, expected ({m},); a scheme "
            "fn(key, weights, n_out) must return n_out ancestor indices.")
    identity = jnp.arange(m, dtype=jnp.int32)
    if m != n:
        identity = identity % n
    return jnp.where(dead, identity, idx)


def ess_from_normalized(lw, dead):
    """:func:`ess` from already normalized log weights and the ``dead`` flag.

    Examples:
        >>> import jax.numpy as jnp
        >>> lw, _, dead = log_normalize(jnp.zeros(4))
        >>> float(ess_from_normalized(lw, dead))
        4.0
    """
    return jnp.where(dead, 0.0, jnp.exp(-jax.nn.logsumexp(2.0 * lw, axis=-1)))


def _multinomial(key, w, m):
    return invert_cdf(jnp.cumsum(w), _sorted_uniforms(key, m), w)


def _stratified(key, w, m):
    return invert_cdf(jnp.cumsum(w), (jnp.arange(m) + jax.random.uniform(key, (m,))) / m, w)


def _systematic(key, w, m):
    return invert_cdf(jnp.cumsum(w), (jnp.arange(m) + jax.random.uniform(key, ())) / m, w)


def _residual(key, w, m):
    n = w.shape[0]
    mw = m * w
    counts = jnp.floor(mw)
    resid = mw - counts
    n_det = jnp.sum(counts).astype(jnp.int32)
    slots = jnp.arange(m)
    # deterministic part: slot j < n_det goes to the particle whose cumulative count passes j
    det = jnp.searchsorted(jnp.cumsum(counts), slots, side="right").astype(jnp.int32)
    # residual part: i.i.d. draws from the fractional parts (inverse CDF); any subset is i.i.d.
    u = jax.random.uniform(key, (m,))
    rnd = invert_cdf(jnp.cumsum(resid), u, resid)
    rnd = jnp.where(jnp.sum(resid) > 0, rnd, jnp.minimum(det, n - 1))
    return jnp.where(slots < n_det, jnp.minimum(det, n - 1), rnd)


for _name, _fn in zip(SCHEMES, (_multinomial, _stratified, _systematic, _residual)):
    register_resampling(_name, _fn)


def offspring_counts(ancestors, n: int):
    """Number of offspring of each of ``n`` particles given ancestor indices.

    Examples:
        >>> import jax.numpy as jnp
        >>> offspring_counts(jnp.array([0, 0, 2]), 3).tolist()
        [2, 0, 1]
    """
    return jnp.zeros(n, jnp.int32).at[ancestors].add(1)


# ------------------------------------------------------------------------------ the resampling step
class ResampleStep(NamedTuple):
    """Output of :func:`resample_step`: ``ancestors`` ``(N,)`` int32 (the identity where no
    resampling happened), the particles' ``log_weights`` after the step (zero if resampled, else
    unchanged), the accumulated ``log_z`` and ``dead`` flag, and ``resampled`` (a bool scalar)."""

    ancestors: Any
    log_weights: Any
    log_z: Any
    dead: Any
    resampled: Any


def log_evidence(log_z, log_sum, n: int):
    """Running log Z-hat: ``log_z`` (accumulated at past resampling steps) plus ``log mean(w)`` of
    the current weights, given their log-sum-exp ``log_sum`` (from :func:`log_normalize`) and count.

    Examples:
        >>> import jax.numpy as jnp
        >>> _, lse, _ = log_normalize(jnp.log(jnp.array([1.0, 3.0])))
        >>> float(log_evidence(0.0, lse, 2)) == float(jnp.log(2.0))
        True
    """
    return log_z + log_sum - jnp.log(float(n))


def resample_step(key, log_weights, log_z=0.0, dead=False, *, ess_threshold=1.0, resampling: str = DEFAULT_RESAMPLING,
                  when=True, normalized=None, draw_ancestors=None) -> ResampleStep:
    """One (ESS-triggered) resampling step over ``N`` log weights, with the evidence bookkeeping.

    Resampling happens when ``when`` holds (a bool, possibly traced: e.g. ``t > 0``) and the ESS
    of ``log_weights`` is below ``ess_threshold * N``; a Python number ``ess_threshold >= 1``
    resamples whenever ``when`` holds, without computing the ESS. On resampling the ancestors
    are drawn by the scheme ``resampling`` (or by ``draw_ancestors(key, normalized_log_weights,
    all_dead) -> (N,) int32``, e.g. conditional SMC's), ``log_z`` gains ``log mean(w)`` (the
    weights' log-sum-exp minus ``log N``), the weights become zero and ``dead`` records whether
    every particle had weight zero. Otherwise the ancestors are the identity and the rest is
    unchanged. ``normalized`` optionally passes ``log_normalize(log_weights)`` when already known.
    The caller gathers its particles by ``ancestors``. Works under ``jit``/``vmap``/``lax.scan``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> lw = jnp.log(jnp.array([0.1, 0.1, 0.1, 2.0]))
        >>> out = resample_step(jax.random.key(0), lw, ess_threshold=0.5)
        >>> out.ancestors.tolist(), out.log_weights.tolist(), round(float(out.log_z), 4), bool(out.resampled)
        ([3, 3, 3, 3], [0.0, 0.0, 0.0, 0.0], -0.5534, True)
        >>> bool(resample_step(jax.random.key(0), jnp.zeros(4), ess_threshold=0.5).resampled)
        False
    """
    lw = jnp.asarray(log_weights)
    n = lw.shape[0]
    lwn, lse, now_dead = log_normalize(lw) if normalized is None else normalized
    always = not isinstance(ess_threshold, jax.core.Tracer) and isinstance(ess_threshold, (int, float)) \
        and ess_threshold >= 1.0

    def draw():
        if draw_ancestors is not None:
            return jnp.asarray(draw_ancestors(key, lwn, now_dead), jnp.int32)
        return indices_from_normalized(key, lwn, now_dead, resampling)

    arange = jnp.arange(n, dtype=jnp.int32)
    if always:
        need = when
    else:
        need = jnp.logical_and(when, ess_from_normalized(lwn, now_dead) < ess_threshold * n)
    # the draw is computed and selected (not a lax.cond): the same program as every algorithm's
    # former inline copy, so the same key still gives the same bits
    anc = draw() if need is True else jnp.where(need, draw(), arange)
    if need is True:
        return ResampleStep(anc, jnp.zeros_like(lw), log_evidence(log_z, lse, n), jnp.logical_or(dead, now_dead),
                            jnp.array(True))
    return ResampleStep(anc, jnp.where(need, 0.0, lw), jnp.where(need, log_evidence(log_z, lse, n), log_z),
                        jnp.logical_or(dead, jnp.logical_and(need, now_dead)), need)
