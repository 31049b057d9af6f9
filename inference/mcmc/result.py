"""The result of :func:`inference.mcmc.run`: draws, kernel statistics and the final traces.

Examples:
    >>> import jax, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     return ppl.normal(0.0, 1.0) @ "x"
    >>> res = mcmc.run(jax.random.key(0), mcmc.hmc(ppl.select("x"), 0.5, 3), model.simulate(jax.random.key(1)), 20)
    >>> isinstance(res, MCMCResult), res.final_trace.choices["x"].shape
    (True, (1,))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap

from .infos import MixtureInfo, is_info

__all__ = ["MCMCResult", "PendingTrace"]


class PendingTrace:
    """A run's final trace not written yet: ``write()`` runs ``fn(*parts)`` once and returns (and
    keeps) its result. :class:`MCMCResult` holds one in ``final_trace`` until that is first read.

    Examples:
        >>> p = PendingTrace(lambda a, b: a + b, 1, 2)
        >>> p.write(), p.write()
        (3, 3)
    """

    __slots__ = ("_fn", "_parts", "_value")

    def __init__(self, fn, *parts):
        self._fn, self._parts, self._value = fn, parts, None

    def write(self):
        if self._parts is not None:
            self._value, self._parts = self._fn(*self._parts), None
        return self._value


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MCMCResult:
    """Result of :func:`run`.

    - ``choices``: a :class:`DrawMap` of the choices the kernel moves, leaves shaped
      ``(n_chains, n_samples, *site_shape)``;
    - ``info``: the per-kernel info (same leading axes; a tuple for combinators);
    - ``final_trace``: the chains' last traces (batched, sharing the model's arguments), to
      continue from. For kernels that move a position (``hmc``, ``mala``, ``nuts``, ...) it is
      written from the final position when first read (one more small program), so that a run
      whose final trace is never used does not compile the model's update for it;
    - ``fixed_choices``: the choices not stored per draw (observations and unselected choices),
      once, from the initial trace (with a leading chain axis if the run started from a batch);
    - ``kernel``: the kernel that ran.
    """

    choices: ChoiceMap
    info: Any
    final_trace: Any
    fixed_choices: Any = None
    kernel: Any = dataclasses.field(default=None, metadata=dict(static=True))

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name == "final_trace" and isinstance(value, PendingTrace):
            value = value.write()
            object.__setattr__(self, "final_trace", value)
        return value

    @property
    def n_chains(self) -> int:
        return int(jax.tree_util.tree_leaves(self.choices)[0].shape[0])

    @property
    def n_samples(self) -> int:
        return int(jax.tree_util.tree_leaves(self.choices)[0].shape[1])

    def acceptance_rate(self):
        """Mean acceptance probability per chain: an array ``(n_chains,)`` for one kernel, a
        tuple of them (one per component) for combinators."""

        def rate(info):
            if is_info(info):
                return jnp.mean(info.acceptance_rate, axis=1)
            if isinstance(info, MixtureInfo):
                return (None, tuple(rate(i) for i in info.infos))
            if isinstance(info, (tuple, list)):
                return tuple(rate(i) for i in info)
            return None

        return rate(self.info)

    def divergences(self):
        """Number of divergent transitions per chain over the stored draws: an integer array
        ``(n_chains,)`` for a kernel that reports them (``hmc``, ``mala``, ``nuts``), ``None``
        for one that does not (``mh``, ``gibbs``), and for combinators a tuple shaped like
        :meth:`acceptance_rate`'s (a ``mixture`` counts a component's steps only when it was
        the one chosen).

        Examples:
            >>> import jax, ppl
            >>> from inference import mcmc
            >>> @ppl.gen
            ... def model():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> tr = model.simulate(jax.random.key(0))
            >>> res = mcmc.run(jax.random.key(1), mcmc.hmc(ppl.select("x"), 0.5, 5), tr, 100, n_chains=2)
            >>> res.divergences().tolist()
            [0, 0]
        """

        def count(info, mask=None):
            if is_info(info):
                if "diverging" not in info:
                    return None
                d = np.asarray(info.diverging).astype(bool)
                if mask is not None:
                    d = d & mask
                return d.reshape(d.shape[:2] + (-1,)).any(axis=2).sum(axis=1)
            if isinstance(info, MixtureInfo):
                j = np.asarray(info.chosen)
                return (None, tuple(count(sub, j == i) for i, sub in enumerate(info.infos)))
            if isinstance(info, (tuple, list)):
                return tuple(count(i, mask) for i in info)
            return None

        return count(self.info)

    def to_arviz(self):
        """An ArviZ ``InferenceData`` with the choices as the posterior and kernel statistics."""
        from inference.diagnostics.mcmc import to_arviz

        return to_arviz(self)

    def summary(self, **kw):
        """ArviZ summary table (mean, sd, HDI, MCSE, bulk/tail ESS, R-hat) as a pandas DataFrame,
        one row per stored choice (per element of an array choice) and deterministic value.

        Keyword arguments are forwarded to ``arviz.summary`` through
        :func:`inference.diagnostics.mcmc.summary`: ``var_names`` (ArviZ names: ``"slope"``, a
        nested address ``("group", "theta")`` as ``"group/theta"``; default: every stored value
        that varies), ``hdi_prob`` (default 0.94), ``kind`` (``"all"``, ``"stats"`` or
        ``"diagnostics"``), ``round_to``, ``stat_focus``, ``filter_vars``, ``coords``, ...

        Examples:
            >>> import jax, ppl
            >>> from inference import mcmc
            >>> @ppl.gen
            ... def model():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> res = mcmc.run(jax.random.key(0), mcmc.mh(ppl.select("x")), model.simulate(jax.random.key(1)), 50,
            ...                n_chains=2)
            >>> list(res.summary(hdi_prob=0.9, kind="stats").columns)
            ['mean', 'sd', 'hdi_5%', 'hdi_95%']
        """
        from inference.diagnostics.mcmc import summary

        return summary(self, **kw)


