"""Programmable variational inference (ADEV).

An *expectation program* is a Python function ``f(key, params, *args)`` that samples through
``ppl`` generative functions and returns a scalar. :func:`expectation` compiles it into unbiased
estimators of ``E[f]`` and of its gradient with respect to ``params``; each sampling site picks a
gradient strategy (:data:`reparam`, :func:`reinforce`, :data:`enum`, :data:`mvd`), set at the site
(``estimator=``) or from outside (:func:`with_estimators`); a new strategy is a
:class:`Strategy` subclass (see ``inference/vi/estimators.py``). Objectives (:func:`elbo`,
:func:`iwelbo`, :func:`hvi`, :func:`iwhvi`, :func:`diwhvi`, :func:`rws`, :func:`vimco`) are
expectation programs themselves; :func:`fit` optimizes them with optax. See ``docs/vi.md``.

Examples:
    >>> import jax, ppl
    >>> from inference import vi
    >>> @ppl.gen
    ... def guide(mu):
    ...     return ppl.normal(mu, 1.0) @ "z"
    >>> @vi.expectation
    ... def objective(key, mu):
    ...     return -(guide.simulate(key, mu).retval - 2.0) ** 2
    >>> float(objective.grad_estimate(jax.random.key(0), 2.0)) == float(
    ...     objective.grad_estimate(jax.random.key(0), 2.0))
    True
"""

from .adev import Expectation, MapMean, expectation, map_mean, with_estimators
from .autoguide import (AutoDelta, AutoGuide, AutoLaplaceApproximation, AutoLowRankMultivariateNormal,
                        AutoMultivariateNormal, AutoNormal)
from .estimators import EstimatorError, Site, Strategy, enum, mvd, reinforce, reparam
from .fit import FitResult, Minibatch, fit, minibatch
from .marginal import Normalized, detached, marginal, normalize
from .objectives import diwhvi, elbo, hvi, iwelbo, iwhvi, rws, sleep_q, vimco, wake_p, wake_q

__all__ = ["expectation", "Expectation", "with_estimators", "map_mean", "MapMean",
           "reparam", "reinforce", "enum", "mvd", "Strategy", "Site", "EstimatorError",
           "fit", "FitResult", "minibatch", "Minibatch",
           "marginal", "normalize", "Normalized", "detached",
           "elbo", "iwelbo", "hvi", "iwhvi", "diwhvi", "rws", "wake_p", "wake_q", "sleep_q", "vimco",
           "AutoGuide", "AutoNormal", "AutoMultivariateNormal", "AutoLowRankMultivariateNormal", "AutoDelta",
           "AutoLaplaceApproximation"]
