"""Site log densities: numpyro's ``log_prob``, leaner and with exact gradients for a few families.

Every site score goes through :func:`log_density`. For most families it is numpyro's
``d.log_prob(v)``. Three common ones are computed here, when the value or the parameters are
traced (inside a compiled program; concrete values keep numpyro's method and its warning about
values outside the support):

- ``normal``: numpyro's formula bit for bit; the support check (the value is a real number) is one
  ``isfinite`` instead of numpyro's three comparisons and two ands per element.
- ``bernoulli(logits=x)`` and ``binomial(n, logits=x)``: through :func:`softplus`, whose derivative
  is given explicitly. numpyro writes ``log(1 + e^x)`` as ``max(x, 0) + log1p(exp(-|x|))`` and
  differentiates through both kinks at ``x = 0``, which gives a wrong gradient there (for a
  Bernoulli, 0 or 1 instead of ``y - 1/2``); a logistic model whose weights start at zero has
  every logit exactly 0, so the first gradient of an optimizer, of NUTS's warm-up or of a VI run
  was off. The values agree with numpyro's up to float rounding and are exact at infinite logits.

Smaller programs also compile faster: every program that scores such a site uses these.

Examples:
    >>> import jax, jax.numpy as jnp, numpyro.distributions as nd
    >>> g = jax.grad(lambda x: log_density(nd.Bernoulli(logits=x), jnp.int32(0)))
    >>> float(g(0.0))
    -0.5
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from jax.scipy.special import gammaln

__all__ = ["log_density", "normal_log_density", "softplus"]


@jax.custom_jvp
def softplus(x):
    """``log(1 + exp(x))`` as ``max(x, 0) + log1p(exp(-|x|))`` (numpyro's and TensorFlow's form:
    exact at infinite ``x``), with its derivative ``sigmoid(x)`` given explicitly, sharing
    ``exp(-|x|)``: right at ``x = 0`` too (1/2), where differentiating the formula is not.

    Examples:
        >>> import jax
        >>> float(softplus(0.0)), float(jax.grad(softplus)(0.0)), float(softplus(-float("inf")))
        (0.6931471824645996, 0.5, 0.0)
    """
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    y = jnp.maximum(x, 0.0) + jnp.log1p(e)
    r = 1.0 / (1.0 + e)
    return y, jnp.where(x >= 0, r, e * r) * t


def normal_log_density(v, loc, scale, support_check: bool):
    """numpyro's ``Normal(loc, scale).log_prob(v)``, bit for bit, its support check (``v`` is a real
    number, else ``-inf``) as one ``isfinite`` when ``support_check``.

    Examples:
        >>> import jax.numpy as jnp
        >>> normal_log_density(jnp.array([0.0, jnp.inf]), 0.0, 1.0, True).tolist()
        [-0.9189385175704956, -inf]
    """
    normalize_term = jnp.log(jnp.sqrt(2 * jnp.pi) * scale)
    value_scaled = (v - loc) / scale
    lp = -0.5 * value_scaled**2 - normalize_term
    return jnp.where(jnp.isfinite(v), lp, -jnp.inf) if support_check else lp


def _traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _in_support(d, lp, ok):
    """``lp`` where ``ok`` (the value is in the support), ``-inf`` elsewhere, as numpyro's
    validation does (its warning too, for concrete values)."""
    if not isinstance(ok, jax.core.Tracer) and not bool(np.all(ok)):
        warnings.warn("Out-of-support values provided to log prob method. The value argument should be "
                      "within the support.", stacklevel=3)
    return jnp.where(ok, lp, -jnp.inf)


def log_density(d, v):
    """``d.log_prob(v)``: numpyro's, with the leaner forms and exact gradients of the module doc
    for ``normal``, ``bernoulli(logits=...)`` and ``binomial(n, logits=...)``.

    Examples:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as nd
        >>> d = nd.Normal(0.5, 2.0)
        >>> xs = jnp.array([0.1, jnp.inf, jnp.nan])
        >>> bool(jnp.array_equal(jax.jit(lambda x: log_density(d, x))(xs), d.log_prob(xs), equal_nan=True))
        True
        >>> b = nd.Bernoulli(logits=jnp.array([-jnp.inf, -jnp.inf, 2.0, jnp.inf]), validate_args=False)
        >>> jax.jit(lambda y: log_density(b, y))(jnp.array([0, 1, 1, 1])).tolist()[:2]
        [-0.0, -inf]
    """
    kind = type(d)
    if kind is nd.Normal and _traced(v):
        return normal_log_density(v, d.loc, d.scale, d._validate_args)
    if kind is nd.BernoulliLogits and _traced(v, d.logits):
        v = jnp.asarray(v)
        x, one = jnp.broadcast_arrays(d.logits, v == 1)
        # log sigmoid(x) at 1, log sigmoid(-x) at 0
        lp = -softplus(jnp.where(one, -x, x))
        return _in_support(d, lp, one | (v == 0)) if d._validate_args else lp
    if kind is nd.BinomialLogits and _traced(v, d.logits, d.total_count):
        v, n, x = jnp.asarray(v), d.total_count, d.logits
        lp = (v * x - gammaln(v + 1) - gammaln(n - v + 1)) - (n * softplus(x) - gammaln(n + 1))
        return _in_support(d, lp, d.support(v)) if d._validate_args else lp
    return d.log_prob(v)
