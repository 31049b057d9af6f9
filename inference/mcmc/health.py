"""Health checks of MCMC runs: a finite starting trace, and warnings about chains that barely
move or transitions that diverge (used by :func:`inference.mcmc.run`).

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def m():
    ...     return ppl.half_normal(1.0) @ "s"
    >>> tr, _ = m.generate(jax.random.key(0), ppl.ChoiceMap({"s": -1.0}))
    >>> find_nonfinite(tr)
    ('s',)
"""

from __future__ import annotations

import warnings

import numpy as np

from ppl.choicemap import Masked
from ppl.errors import NonFiniteError, fmt_addr

from ..sharding import to_host
from .combinators import Cycle, Mixture, Repeat
from .infos import is_info

__all__ = ["warn_health", "check_finite", "find_nonfinite"]

#: A chain whose acceptance rate during sampling is below this is reported as stuck.
_STUCK = 0.01


def _health(kernel, info, label, mask=None):
    """``(label, kernel, per-chain acceptance rate or None, per-chain divergences or None)``
    for every basic kernel inside ``kernel``."""
    if isinstance(kernel, Cycle):
        return [r for i, (k, sub) in enumerate(zip(kernel.kernels, info))
                for r in _health(k, sub, f"{label} component {i}", mask)]
    if isinstance(kernel, Mixture):
        j = np.asarray(info.chosen)
        return [r for i, (k, sub) in enumerate(zip(kernel.kernels, info.infos))
                for r in _health(k, sub, f"{label} component {i}", (j == i) if mask is None else mask & (j == i))]
    if isinstance(kernel, Repeat):
        return _health(kernel.kernel, info, label, mask)
    if not is_info(info):
        return []
    ap = np.asarray(info.acceptance_rate, dtype=float)
    ap = ap.reshape(ap.shape[:2] + (-1,)).mean(axis=2)
    m = np.ones(ap.shape, bool) if mask is None else mask
    with np.errstate(invalid="ignore"):
        rate = np.where(m.sum(axis=1) > 0, (np.nan_to_num(ap) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1), np.nan)
    div = None
    if "diverging" in info:
        d = np.asarray(info.diverging).astype(bool)
        div = (d.reshape(d.shape[:2] + (-1,)).any(axis=2) & m).sum(axis=1)
    return [(label, kernel, rate, div)]


def _advice(kernel):
    if hasattr(kernel, "step_size"):
        return (f"use a smaller step size than {getattr(kernel, 'step_size')}, or let it adapt "
                "(adapt_step_size=True for hmc/mala, adapt=True for rw, or mcmc.nuts) with burn_in > 0")
    return "use a proposal closer to the posterior (e.g. a smaller random-walk scale) or a gradient kernel"


def warn_health(kernel, info):
    """Warn (``UserWarning``, pointing at the caller of ``mcmc.run``) about chains that barely move
    (acceptance rate below 1% during sampling) and about divergent transitions, per basic kernel
    inside ``kernel`` (cycle and mixture components named by index).

    Examples:
        >>> import numpy as np, warnings
        >>> from inference.mcmc.infos import MHInfo
        >>> from inference import mcmc
        >>> import ppl
        >>> info = MHInfo(np.zeros((1, 5)), np.zeros((1, 5), bool))
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     warn_health(mcmc.mh(ppl.select("x")), info)
        >>> "accepted less than 1%" in str(w[0].message)
        True
    """
    info = to_host(info)  # chains sharded over several processes' devices are gathered first
    for label, k, rate, div in _health(kernel, info, f"kernel {kernel.name}"):
        name = label if k is kernel else f"{label} ({k.name})"
        stuck = [c for c, r in enumerate(rate) if np.isfinite(r) and r < _STUCK]
        if stuck:
            rates = ", ".join(f"{rate[c]:.2%}" for c in stuck[:8])
            warnings.warn(
                f"mcmc.run: {name}: chain(s) {stuck[:8]}{' ...' if len(stuck) > 8 else ''} accepted less than "
                f"{_STUCK:.0%} of proposals during sampling (acceptance rate {rates}), so they barely move; "
                f"{_advice(k)}.",
                UserWarning, stacklevel=3)
        if div is not None and np.any(div > 0):
            bad = [c for c in range(len(div)) if div[c] > 0]
            counts = ", ".join(str(int(div[c])) for c in bad[:8])
            warnings.warn(
                f"mcmc.run: {name}: {int(np.sum(div))} divergent transitions (energy error above 1000 or "
                f"not finite) in chain(s) {bad[:8]}{' ...' if len(bad) > 8 else ''} (counts {counts}, see "
                f"res.divergences()); the draws may be biased. {_advice(k)[0].upper() + _advice(k)[1:]}, "
                "or reparameterize the model.",
                UserWarning, stacklevel=3)


def check_finite(trace):
    """Raise a :class:`ppl.NonFiniteError` naming the first site with a non-finite log density if
    ``trace``'s score is not finite (a chain cannot start there).

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> check_finite(m.simulate(jax.random.key(0)))  # fine: returns None
    """
    score = np.asarray(trace.get_score())
    if np.all(np.isfinite(score)):
        return
    bad = find_nonfinite(trace)
    where = f" at address {fmt_addr(bad)}" if bad else ""
    raise NonFiniteError(
        f"mcmc.run: the initial trace has a non-finite log density{where} (score {score.ravel()[:4]}); "
        "start from a trace with positive density, e.g. model.generate(key, observations, *args), "
        "and check that observations lie in their distributions' support."
    )


def find_nonfinite(trace):
    """The first site whose (present) log density is not finite, or ``None``.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> find_nonfinite(m.simulate(jax.random.key(0))) is None
        True
    """
    for path, v in trace.get_scores().leaves():
        if isinstance(v, Masked):
            val, flag = np.asarray(v.value, dtype=float), np.asarray(v.flag)
            val = np.where(flag.reshape(flag.shape + (1,) * (val.ndim - flag.ndim)), val, 0.0)
        else:
            val = np.asarray(v, dtype=float)
        if not np.all(np.isfinite(val)):
            return path or None
    return None
