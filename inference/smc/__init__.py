"""Sequential Monte Carlo: particle collections, composable steps and complete algorithms.

Building blocks (pure, jit-able): :func:`init`, :func:`extend`, :func:`resample`,
:func:`resample_if`, :func:`rejuvenate`, :func:`change`, :func:`move` (SMCP3 moves with forward and
backward kernels). Algorithms: :func:`particle_filter`
(``ppl.scan`` state-space models), :func:`tempered` (annealed importance sampling / tempered SMC),
:func:`csmc` and :func:`particle_gibbs` (conditional SMC with ancestor sampling),
:func:`backward_sample` (particle smoother), :func:`pmmh`, :func:`resample_move`, and parameter
learning (:func:`fisher_gradient`, :func:`fit_parameters`).

Examples:
    >>> import jax.numpy as jnp
    >>> from inference import smc
    >>> smc.SCHEMES
    ('multinomial', 'stratified', 'systematic', 'residual')
    >>> float(smc.ess(jnp.zeros(8)))
    8.0
"""

from .particles import ParticleCollection
from .resampling import (SCHEMES, ResampleStep, UnknownResamplingError, ess, log_evidence, log_normalize,
                         offspring_counts, register_resampling, resample_indices, resample_step, resampling_schemes)
from .steps import change, extend, init, rejuvenate, resample, resample_if
from ._util import AllParticlesDeadError, ParticleCountError

__all__ = [
    "ParticleCollection", "SCHEMES", "ess", "log_normalize", "offspring_counts", "resample_indices",
    "init", "extend", "resample", "resample_if", "rejuvenate", "change", "AllParticlesDeadError",
    "ParticleCountError", "register_resampling", "resampling_schemes", "UnknownResamplingError", "resample_step",
    "ResampleStep", "log_evidence",
]

from .filters import FilterResult, genealogy, particle_filter
from .online import FilterState, filter_init, filter_step_block
from .csmc import CSMCResult, PGResult, backward_sample, csmc, particle_gibbs

from .pmmh import PMMHChains, PMMHResult, pmmh, random_walk
from .tempered import TemperedResult, ais, power_schedule, resample_move, tempered

__all__ += ["PMMHChains", "PMMHResult", "pmmh", "random_walk", "TemperedResult", "ais", "power_schedule",
            "resample_move", "tempered"]
from .learning import ParameterFitResult, fisher_gradient, fit_parameters, score_climbing_step

__all__ += ["ParameterFitResult", "fisher_gradient", "fit_parameters", "score_climbing_step"]
from .moves import move

__all__ += ["move"]
__all__ += ["FilterState", "filter_init", "filter_step_block"]
__all__ += ["FilterResult", "genealogy", "particle_filter", "CSMCResult", "PGResult", "backward_sample", "csmc",
            "particle_gibbs"]


def __getattr__(name):
    if name == "FitResult":  # deprecated alias (warns), see learning.ParameterFitResult
        from .learning import deprecated_fit_result

        return deprecated_fit_result()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
