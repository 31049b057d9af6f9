"""Particle collections: weighted, vectorized traces as one pytree.

A :class:`ParticleCollection` holds ``traces`` (one trace whose every leaf has a leading particle
axis of size ``N``), unnormalized ``log_weights`` of shape ``(N,)``, and ``log_z``, the log of the
product of the average weights at past resampling steps. Its evidence estimate is

    log Z-hat = log_z + logsumexp(log_weights) - log N,

and Z-hat is an unbiased estimate of the normalizing constant of the target (unbiased in Z, not
in log Z). ``dead`` is True once every particle had weight zero (Z-hat is then 0 and log Z-hat is
``-inf``; nothing becomes NaN).

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import importance
    >>> @ppl.gen
    ... def model():
    ...     x = ppl.normal(0.0, 1.0) @ "x"
    ...     return ppl.normal(x, 1.0) @ "y"
    >>> ps = importance.sample(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 1.0}), 2000)
    >>> ps.log_weights.shape, ps.traces.choices["x"].shape
    ((2000,), (2000,))
    >>> bool(abs(ps.expectation(lambda tr: tr.choices["x"]) - 0.5) < 0.1)
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .resampling import ess as _ess
from .resampling import log_normalize, resample_indices

__all__ = ["ParticleCollection", "gather", "n_particles"]


def gather(tree, idx):
    """Index every leaf of ``tree`` along its leading (particle) axis."""
    return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), tree)


def n_particles(log_weights) -> int:
    return int(jnp.shape(log_weights)[0])


_ess_jit = jax.jit(_ess)


@jax.jit
def _lml(log_weights, log_z):
    _, lse, _ = log_normalize(log_weights)
    return log_z + lse - jnp.log(float(log_weights.shape[0]))


@jax.jit
def _weights(log_weights):
    return jnp.exp(log_normalize(log_weights)[0])


@jax.jit
def _any_dead(log_weights, dead):
    return jnp.logical_or(dead, log_normalize(log_weights)[2])


@jax.jit(static_argnums=(0,))
def _expectation(fn, log_weights, traces):
    w = jnp.exp(log_normalize(log_weights)[0])
    vals = jax.vmap(fn)(traces)
    return jax.tree_util.tree_map(lambda v: jnp.tensordot(w, v.astype(w.dtype), axes=1), vals)


@dataclasses.dataclass(eq=False)
class ParticleCollection:
    """Weighted particles: ``traces`` (vectorized), ``log_weights`` (N,), ``log_z``, ``dead``."""

    traces: Any
    log_weights: Any
    log_z: Any = 0.0
    dead: Any = False

    @property
    def n_particles(self) -> int:
        """The number of particles ``N``."""
        return n_particles(self.log_weights)

    @property
    def choices(self):
        """The particles' choices (every leaf with a leading particle axis)."""
        return self.traces.choices

    def log_marginal_likelihood(self):
        """log Z-hat: ``log_z + logsumexp(log_weights) - log N`` (``-inf`` if all died)."""
        return _lml(self.log_weights, self.log_z)

    def ess(self):
        """Effective sample size of the current weights (0 if every particle is dead)."""
        return _ess_jit(self.log_weights)

    def normalized_weights(self):
        """Normalized weights (uniform if every particle is dead; never NaN)."""
        return _weights(self.log_weights)

    def all_dead(self):
        """Whether every particle has weight zero now or had at a past resampling step."""
        return _any_dead(self.log_weights, self.dead)

    def resample(self, key, scheme: str = "systematic"):
        """Resample by ``scheme``; the new weights are equal and log Z-hat is unchanged."""
        from .steps import resample

        return resample(key, self, scheme)

    def expectation(self, fn):
        """Self-normalized estimate of ``E[fn(trace)]``; ``fn`` maps one trace to a pytree.

        Example:
            >>> import jax, ppl
            >>> from inference import importance
            >>> ps = importance.sample(jax.random.key(1), ppl.normal, (0.0, 1.0), None, 500)
            >>> float(ps.expectation(lambda tr: tr.retval ** 2)) > 0.5
            True
        """
        return _expectation(fn, self.log_weights, self.traces)

    def sample(self, key, n: int | None = None, scheme: str = "multinomial"):
        """``n`` traces drawn according to the weights (sampling importance resampling)."""
        idx = resample_indices(key, self.log_weights, scheme, n_out=n)
        return gather(self.traces, idx)

    def __repr__(self):
        try:
            lml = float(self.log_marginal_likelihood())
            return f"ParticleCollection(n={self.n_particles}, log_ml={lml:.4f}, ess={float(self.ess()):.1f})"
        except Exception:
            return f"ParticleCollection(n={self.n_particles})"


jax.tree_util.register_dataclass(
    ParticleCollection, data_fields=["traces", "log_weights", "log_z", "dead"], meta_fields=[]
)
