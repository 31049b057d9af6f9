"""Resampling schemes over log weights, each O(N log N) or better.

Every scheme turns ``N`` log weights into ``M`` ancestor indices (``M = N`` by default) whose
offspring counts have expectation ``M * w_i`` (``w`` the normalized weights):

- ``"multinomial"``: ``M`` i.i.d. draws, by sorted uniforms (normalized cumulative sums of
  exponential spacings, O(M)) and an inverse-CDF ``searchsorted``;
- ``"stratified"``: one uniform per stratum ``[(j + U_j) / M]``;
- ``"systematic"``: one shared uniform ``[(j + U) / M]`` (lowest variance in practice);
- ``"residual"``: ``floor(M w_i)`` deterministic copies plus a multinomial draw of the rest.

Never ``jax.random.categorical(..., shape=(N,))``, which builds an ``N x N`` Gumbel array.

Weights are handled in log space: ``-inf`` weights (dead particles) are never selected, ``NaN``
weights count as dead, and if every particle is dead the ancestors are the identity and the
``dead`` flag of :func:`log_normalize` says so (no NaN anywhere).

Example:
    >>> import jax, jax.numpy as jnp
    >>> lw = jnp.log(jnp.array([0.0, 0.5, 0.25, 0.25]))
    >>> resample_indices(jax.random.key(0), lw, "residual").tolist()
    [1, 1, 2, 3]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["SCHEMES", "resample_indices", "offspring_counts", "log_normalize", "ess"]

SCHEMES = ("multinomial", "stratified", "systematic", "residual")


def log_normalize(log_weights):
    """``(normalized log weights, log-sum-exp, dead)`` with NaN treated as ``-inf``.

    ``dead`` is True when every weight is ``-inf``; the normalized weights are then uniform so
    that downstream arithmetic stays finite.

    Example:
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

    Example:
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


def _invert(cdf_unnorm, u, w):
    """Indices ``i`` with ``cdf[i-1] <= u * total < cdf[i]``, never landing on a zero weight."""
    n = cdf_unnorm.shape[0]
    total = cdf_unnorm[-1]
    idx = jnp.searchsorted(cdf_unnorm, u * total, side="right")
    last_pos = n - 1 - jnp.argmax((w > 0)[::-1])
    return jnp.minimum(idx, last_pos).astype(jnp.int32)


def resample_indices(key, log_weights, scheme: str = "systematic", n_out: int | None = None):
    """Ancestor indices (int32, shape ``(n_out,)``) drawn by ``scheme`` from ``log_weights``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> lw = jnp.log(jnp.array([0.1, 0.0, 0.9]))
        >>> a = resample_indices(jax.random.key(1), lw, "systematic", n_out=10)
        >>> a.shape, int((a == 1).sum())
        ((10,), 0)
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown resampling scheme {scheme!r}; choose one of {SCHEMES}")
    return _resample_jit(key, log_weights, scheme, None if n_out is None else int(n_out))


@jax.jit(static_argnames=("scheme", "n_out"))
def _resample_jit(key, log_weights, scheme, n_out):
    lw, _, dead = log_normalize(log_weights)
    return indices_from_normalized(key, lw, dead, scheme, n_out)


def indices_from_normalized(key, lw, dead, scheme, n_out=None):
    """:func:`resample_indices` from already normalized log weights and the ``dead`` flag."""
    n = lw.shape[0]
    m = n if n_out is None else int(n_out)
    w = jnp.exp(lw)
    if scheme == "residual":
        idx = _residual(key, w, m)
    else:
        if scheme == "multinomial":
            u = _sorted_uniforms(key, m)
        elif scheme == "stratified":
            u = (jnp.arange(m) + jax.random.uniform(key, (m,))) / m
        else:  # systematic
            u = (jnp.arange(m) + jax.random.uniform(key, ())) / m
        idx = _invert(jnp.cumsum(w), u, w)
    identity = jnp.arange(m, dtype=jnp.int32)
    if m != n:
        identity = identity % n
    return jnp.where(dead, identity, idx)


def ess_from_normalized(lw, dead):
    """:func:`ess` from already normalized log weights and the ``dead`` flag."""
    return jnp.where(dead, 0.0, jnp.exp(-jax.nn.logsumexp(2.0 * lw, axis=-1)))


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
    rnd = _invert(jnp.cumsum(resid), u, resid)
    rnd = jnp.where(jnp.sum(resid) > 0, rnd, jnp.minimum(det, n - 1))
    return jnp.where(slots < n_det, jnp.minimum(det, n - 1), rnd)


def offspring_counts(ancestors, n: int):
    """Number of offspring of each of ``n`` particles given ancestor indices.

    Example:
        >>> import jax.numpy as jnp
        >>> offspring_counts(jnp.array([0, 0, 2]), 3).tolist()
        [2, 0, 1]
    """
    return jnp.zeros(n, jnp.int32).at[ancestors].add(1)
