"""Programmable variational inference (ADEV).

An *expectation program* is a Python function ``f(key, params, *args)`` that samples through
``ppl`` generative functions and returns a scalar. :func:`expectation` compiles it into unbiased
estimators of ``E[f]`` and of its gradient with respect to ``params``; each sampling site picks a
gradient strategy (:data:`reparam`, :func:`reinforce`, :data:`enum`, :data:`mvd`), set at the site
(``estimator=``) or from outside (:func:`with_estimators`). See ``docs/vi.md``.

Example:
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

from .adev import Expectation, expectation, with_estimators
from .estimators import EstimatorError, Strategy, enum, mvd, reinforce, reparam

__all__ = ["expectation", "Expectation", "with_estimators", "reparam", "reinforce", "enum", "mvd",
           "Strategy", "EstimatorError"]
