"""The named distribution families: ``ppl.normal``, ``ppl.gamma``, ... (re-exported by
:mod:`ppl.distributions` and :mod:`ppl`).

Each is a :class:`ppl.distributions.DistributionGF` over a numpyro distribution, with numpyro's
parameter names and positional order (``truncated_normal(loc, scale, low, high)``,
``negative_binomial2(mean, concentration)``, ``lkj_cholesky(dimension, concentration)``).
Parameters numpyro takes by keyword only (``low``/``high`` of ``TruncatedNormal``, ``gate`` of
``ZeroInflatedNegativeBinomial2``) may be given positionally here too. Densities and samplers are
numpyro's. Checks numpyro's ``arg_constraints`` do not express are registered with
:func:`ppl.dist_checks.register_family_check` next to the family.

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def model():
    ...     s = ppl.half_cauchy(1.0) @ "s"
    ...     return ppl.truncated_normal(0.0, s, -1.0, 1.0) @ "x"
    >>> tr = model.simulate(jax.random.key(0))
    >>> bool(tr.choices["s"] > 0), bool(abs(tr.choices["x"]) <= 1.0)
    (True, True)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.distributions.util import multinomial as _np_multinomial
from numpyro.distributions.truncated import TwoSidedTruncatedDistribution

from .dist_checks import register_family_check
from .distributions import DistributionGF

__all__ = [
    "normal", "half_normal", "half_cauchy", "log_normal", "gamma", "inverse_gamma", "beta",
    "exponential", "uniform", "student_t", "cauchy", "laplace", "von_mises", "truncated_normal",
    "dirichlet", "mv_normal", "lkj", "lkj_cholesky", "wishart", "wishart_cholesky",
    "bernoulli", "flip", "binomial", "poisson", "categorical", "geometric", "multinomial",
    "negative_binomial", "negative_binomial2", "zero_inflated_poisson",
    "zero_inflated_negative_binomial2",
]


# ------------------------------------------------------------------ builders for keyword-only parameters
def _flip(p):
    return nd.Bernoulli(probs=p)


def _truncated_normal(loc=0.0, scale=1.0, low=None, high=None):
    return nd.TruncatedNormal(loc, scale, low=low, high=high)


def _zero_inflated_negative_binomial2(mean, concentration, gate=None, gate_logits=None):
    return nd.ZeroInflatedNegativeBinomial2(mean, concentration, gate=gate, gate_logits=gate_logits)


class _ScalarCountFix:
    """numpyro 0.22's multinomial sampler ignores a scalar ``total_count`` below ``total_count_max``
    (it masks the surplus trials only for an array of counts) and returns floats when it masks:
    sample an unbatched site as a batch of one, where numpyro masks, drop that axis, and keep
    integer counts. Density and everything else are numpyro's."""

    def sample(self, key, sample_shape=()):
        if self.total_count_max is None or jnp.ndim(self.total_count) > 0 or self.batch_shape:
            out = super().sample(key, sample_shape)
        else:
            out = _np_multinomial(key, self.probs[None], jnp.reshape(self.total_count, (1,)),
                                  shape=tuple(sample_shape) + (1,), total_count_max=self.total_count_max)[..., 0, :]
        return out.astype(jnp.result_type(int))  # (numpyro returns floats when it masks)


class _MultinomialProbs(_ScalarCountFix, nd.MultinomialProbs):
    pass


class _MultinomialLogits(_ScalarCountFix, nd.MultinomialLogits):
    pass


def _multinomial(total_count=1, probs=None, logits=None, total_count_max=None):
    d = nd.Multinomial(total_count, probs, logits, total_count_max=total_count_max)
    cls = _MultinomialProbs if isinstance(d, nd.MultinomialProbs) else _MultinomialLogits
    p = probs if probs is not None else logits
    return cls(p, total_count, total_count_max=total_count_max)


_truncated_normal.__name__ = "TruncatedNormal"
_multinomial.__name__ = "Multinomial"
_zero_inflated_negative_binomial2.__name__ = "ZeroInflatedNegativeBinomial2"


# ------------------------------------------------------------------ family checks
def _two_sided_checks(d, pos, kw):
    return [(lambda width: width > 0, d.high - d.low, "low must be less than high, i.e. high - low > 0")]


def _wishart_checks(d, pos, kw):
    p = d.event_shape[-1]
    return [(lambda c: c > p - 1, d.concentration,
             f"concentration (degrees of freedom) must be greater than dimension - 1 = {p - 1}")]


register_family_check(TwoSidedTruncatedDistribution, _two_sided_checks)
register_family_check(nd.Wishart, _wishart_checks)
register_family_check(nd.WishartCholesky, _wishart_checks)
# (truncated and zero-inflated families also validate their base distribution's parameters: see
# DistributionGF._validate)


# ------------------------------------------------------------------ continuous
normal = DistributionGF("normal", nd.Normal)
half_normal = DistributionGF("half_normal", nd.HalfNormal)
half_cauchy = DistributionGF("half_cauchy", nd.HalfCauchy)
log_normal = DistributionGF("log_normal", nd.LogNormal)
gamma = DistributionGF("gamma", nd.Gamma)
inverse_gamma = DistributionGF("inverse_gamma", nd.InverseGamma)
beta = DistributionGF("beta", nd.Beta)
exponential = DistributionGF("exponential", nd.Exponential)
uniform = DistributionGF("uniform", nd.Uniform)
student_t = DistributionGF("student_t", nd.StudentT)
cauchy = DistributionGF("cauchy", nd.Cauchy)
laplace = DistributionGF("laplace", nd.Laplace)
von_mises = DistributionGF("von_mises", nd.VonMises)
truncated_normal = DistributionGF("truncated_normal", _truncated_normal)

# ------------------------------------------------------------------ multivariate
dirichlet = DistributionGF("dirichlet", nd.Dirichlet)
mv_normal = DistributionGF("mv_normal", nd.MultivariateNormal)
lkj = DistributionGF("lkj", nd.LKJ)
lkj_cholesky = DistributionGF("lkj_cholesky", nd.LKJCholesky)
wishart = DistributionGF("wishart", nd.Wishart)
wishart_cholesky = DistributionGF("wishart_cholesky", nd.WishartCholesky)

# ------------------------------------------------------------------ discrete
bernoulli = DistributionGF("bernoulli", nd.Bernoulli)
flip = DistributionGF("flip", _flip)
binomial = DistributionGF("binomial", nd.Binomial)
poisson = DistributionGF("poisson", nd.Poisson)
categorical = DistributionGF("categorical", nd.Categorical)
geometric = DistributionGF("geometric", nd.Geometric)
multinomial = DistributionGF("multinomial", _multinomial)
negative_binomial = DistributionGF("negative_binomial", nd.NegativeBinomial)
negative_binomial2 = DistributionGF("negative_binomial2", nd.NegativeBinomial2)
zero_inflated_poisson = DistributionGF("zero_inflated_poisson", nd.ZeroInflatedPoisson)
zero_inflated_negative_binomial2 = DistributionGF("zero_inflated_negative_binomial2", _zero_inflated_negative_binomial2)
