"""Importance sampling and sampling importance resampling (SIR), written against the GFI.

``sample`` returns a :class:`~inference.smc.ParticleCollection`: vectorized traces with
``log_weights``, ``log_marginal_likelihood()`` (log of an unbiased estimate of the evidence),
``ess()``, ``normalized_weights()``, ``resample(key, resampling)`` and ``expectation(fn)``. Values
shared by all particles (the model arguments, the observed values) are stored once, not once per
particle; ``ps.traces`` broadcasts them on access (see :class:`~inference.smc.ParticleCollection`).

Proposals are generative functions. ``proposal.simulate(key, *proposal_args)`` proposes the
unobserved choices (its addresses must not include observed ones; choices it leaves out are drawn
from the model's prior); the model then scores them with the observations through
``model.generate(key, observations | q.choices, *args)``, so the weight is
``log p(x, obs) - log q(x)``. Without a proposal, the prior is the proposal and the weight is the
likelihood of the observations.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import importance
    >>> @ppl.gen
    ... def model():
    ...     mu = ppl.normal(0.0, 1.0) @ "mu"
    ...     return ppl.normal(mu, 1.0) @ "y"
    >>> @ppl.gen
    ... def guide(y):
    ...     return ppl.normal(y / 2, 0.8) @ "mu"
    >>> obs = ppl.ChoiceMap({"y": 1.0})
    >>> ps = importance.sample(jax.random.key(0), model, (), obs, 5000, proposal=guide, proposal_args=(1.0,))
    >>> exact = jax.scipy.stats.norm.logpdf(1.0, 0.0, jnp.sqrt(2.0))
    >>> bool(abs(ps.log_marginal_likelihood() - exact) < 0.02), bool(ps.ess() > 4000)
    (True, True)
"""

from __future__ import annotations

import jax

from .smc import steps as _steps
from .smc._util import check_n_particles, renamed_kwargs, staged
from .smc.particles import ParticleCollection
from .smc.resampling import DEFAULT_RESAMPLING, check_resampling

__all__ = ["sample", "sir", "log_marginal_likelihood", "ParticleCollection"]


def _sample(key, model, args, observations, n_particles, proposal, proposal_args):
    return _steps.init(key, model, args, observations, n_particles, proposal, proposal_args)


_sample_staged = staged(("model", "n_particles", "proposal"), ("args", "proposal_args"))(_sample)


def sample(key, model, args, observations, n_particles: int = 1000, proposal=None, proposal_args=()):
    """Importance sampling: ``n_particles`` weighted traces of ``model(*args)`` given ``observations``.

    Compiled once per model, proposal, particle count and argument structure: new data of the
    same shapes does not recompile. Model arguments that are Python ints/strings are static.
    ``n_particles`` must be a positive integer (else :class:`~inference.smc.ParticleCountError`).

    Examples:
        >>> import jax, ppl
        >>> ps = sample(jax.random.key(0), ppl.normal, (0.0, 1.0), ppl.ChoiceMap.value(0.0), 10)
        >>> round(float(ps.log_marginal_likelihood()), 4)   # log N(0; 0, 1)
        -0.9189
    """
    from ppl.core import as_args_tuple

    from .smc._util import as_choicemap

    return _sample_staged(
        key, model=model, args=as_args_tuple(args, "importance.sample"), observations=as_choicemap(observations),
        n_particles=check_n_particles(n_particles, "importance.sample"), proposal=proposal,
        proposal_args=as_args_tuple(proposal_args, "importance.sample", "proposal_args"),
    )


@renamed_kwargs("importance.sir", scheme="resampling")
def sir(key, model, args, observations, n_particles: int = 1000, n_samples: int = 1, proposal=None,
        proposal_args=(), resampling: str = DEFAULT_RESAMPLING):
    """Sampling importance resampling: ``n_samples`` traces drawn from ``n_particles`` weighted ones.

    Returns the traces (leading axis ``n_samples``). ``resampling`` is the scheme drawing them
    (any name registered in ``inference.smc.resampling``). The default is ``"systematic"``, as
    everywhere else; it used to be ``"multinomial"``, so the same key now gives different traces.
    Pass ``resampling="multinomial"`` for draws that are i.i.d. given the weights. ``scheme=`` is a
    deprecated alias of ``resampling=``.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 0.5) @ "y"
        >>> trs = sir(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 2.0}), 2000, n_samples=500)
        >>> bool(abs(trs.choices["x"].mean() - 1.6) < 0.15)
        True
    """
    n_particles = check_n_particles(n_particles, "importance.sir")
    check_resampling(resampling, "importance.sir")
    n_samples = check_n_particles(n_samples, "importance.sir", "n_samples")
    k1, k2 = jax.random.split(key)
    ps = sample(k1, model, args, observations, n_particles, proposal, proposal_args)
    return ps.sample(k2, n_samples, resampling)


def log_marginal_likelihood(key, model, args, observations, n_particles: int = 1000, proposal=None,
                            proposal_args=()):
    """log of an unbiased importance-sampling estimate of the evidence ``p(observations; args)``.

    Examples:
        >>> import jax, ppl
        >>> round(float(log_marginal_likelihood(jax.random.key(0), ppl.normal, (0.0, 1.0),
        ...       ppl.ChoiceMap.value(1.0), 4)), 4)
        -1.4189
    """
    return sample(key, model, args, observations, n_particles, proposal, proposal_args).log_marginal_likelihood()
