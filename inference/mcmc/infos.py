"""Typed kernel infos: one ``NamedTuple`` per kernel, a pytree of per-step statistics.

Every basic kernel's info has ``acceptance_rate`` (the step's acceptance probability
``min(1, alpha)``) and ``accepted``; gradient kernels add ``step_size`` and ``diverging``, NUTS
``n_steps`` and ``energy``. The field names are ArviZ's ``sample_stats`` names, so
:func:`inference.diagnostics.mcmc.to_arviz` exports them as they are. Combinators return a
tuple of their components' infos (:func:`inference.mcmc.cycle`) or a :class:`MixtureInfo`.

Infos are tuples (``jax.vmap``/``lax.scan`` stack them field by field) that also answer
dict-style lookups by field name, and by the names of earlier releases (``info["accept_prob"]``
is ``info.acceptance_rate``, ``info["num_steps"]`` is ``info.n_steps``); ``"diverging" in info``
tests for a field. Iterating an info yields its values, as for any tuple: use ``info._fields``
for the names.

Examples:
    >>> import jax.numpy as jnp
    >>> info = MHInfo(jnp.float32(0.5), jnp.bool_(True))
    >>> float(info.acceptance_rate), float(info["accept_prob"]), "diverging" in info
    (0.5, 0.5, False)
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["MHInfo", "GibbsInfo", "HMCInfo", "RWInfo", "NUTSInfo", "InvolutiveInfo", "MixtureInfo", "is_info"]

# names of earlier releases (dict infos) -> field names
_OLD_NAMES = {"accept_prob": "acceptance_rate", "num_steps": "n_steps"}


def _getitem(self, k):
    if isinstance(k, str):
        name = _OLD_NAMES.get(k, k)
        if name in self._fields:
            return getattr(self, name)
        raise KeyError(f"{type(self).__name__} has no field {k!r} (its fields are {list(self._fields)})")
    return tuple.__getitem__(self, k)


def _contains(self, k):
    if isinstance(k, str):
        return _OLD_NAMES.get(k, k) in self._fields
    return tuple.__contains__(self, k)


def _keys(self):
    """The field names (dict-style)."""
    return list(self._fields)


def _dict_style(cls):
    cls.__getitem__ = _getitem
    cls.__contains__ = _contains
    cls.keys = _keys
    return cls


@_dict_style
class MHInfo(NamedTuple):
    """Info of a Metropolis-Hastings accept/reject step (:func:`inference.mcmc.accept`, ``mh``)."""

    acceptance_rate: Any
    accepted: Any


@_dict_style
class GibbsInfo(NamedTuple):
    """Info of ``gibbs``: always accepted; ``probs`` is the conditional over the site's support."""

    acceptance_rate: Any
    accepted: Any
    probs: Any


@_dict_style
class HMCInfo(NamedTuple):
    """Info of ``hmc`` and ``mala``: ``diverging`` when the energy error exceeded the threshold
    (or was not finite)."""

    acceptance_rate: Any
    accepted: Any
    step_size: Any
    diverging: Any


@_dict_style
class RWInfo(NamedTuple):
    """Info of ``rw`` (Gaussian random-walk Metropolis): the step size used at this step."""

    acceptance_rate: Any
    accepted: Any
    step_size: Any


@_dict_style
class NUTSInfo(NamedTuple):
    """Info of ``nuts``: NumPyro's mean acceptance probability over the trajectory, divergence,
    number of leapfrog steps, step size and Hamiltonian energy (``accepted`` is ``not diverging``)."""

    acceptance_rate: Any
    accepted: Any
    diverging: Any
    n_steps: Any
    step_size: Any
    energy: Any


@_dict_style
class InvolutiveInfo(NamedTuple):
    """Info of ``involutive``: the accept/reject plus the move's log Jacobian determinant."""

    acceptance_rate: Any
    accepted: Any
    log_det_jacobian: Any


@_dict_style
class MixtureInfo(NamedTuple):
    """Info of ``mixture``: the index of the component applied and every component's info
    (all are evaluated; only the chosen one's move is kept)."""

    chosen: Any
    infos: Any


def is_info(x) -> bool:
    """Whether ``x`` is the info of a basic kernel (has ``acceptance_rate``), not of a combinator.

    Examples:
        >>> import jax.numpy as jnp
        >>> is_info(MHInfo(jnp.float32(1.0), jnp.bool_(True))), is_info((1, 2))
        (True, False)
    """
    return isinstance(x, tuple) and "acceptance_rate" in getattr(x, "_fields", ())
