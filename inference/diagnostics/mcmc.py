"""MCMC diagnostics: ArviZ export and summaries, ESS, R-hat, MCSE, and calibration checks.

- :func:`to_arviz`, :func:`summary`: an ``mcmc.run`` result as ArviZ ``InferenceData`` / table.
- :func:`ess`, :func:`rhat`, :func:`mcse`: ArviZ's bulk ESS, rank-normalized R-hat and the Monte
  Carlo standard error of the mean, for arrays shaped ``(n_chains, n_draws, ...)``.
- :func:`mean_within_mcse`: z-test of a posterior mean against an exact value.
- :func:`sbc_ranks`, :func:`rank_uniformity`: simulation-based calibration (rank of the true
  value among posterior draws; chi-square test of uniform ranks).
- :func:`geweke_z`: Geweke's z-score comparing the start and end of a chain.

Examples:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 500))
    >>> bool(abs(rhat(x) - 1.0) < 0.02), bool(ess(x) > 1000)
    (True, True)
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["to_arviz", "summary", "ess", "rhat", "mcse", "mean_within_mcse", "sbc_ranks",
           "rank_uniformity", "geweke_z", "var_name"]


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    return az


def var_name(path) -> str:
    """ArviZ variable name of an address: ``"mu"`` or ``"group/theta"``."""
    return "/".join(path) if isinstance(path, tuple) else str(path)


def _posterior_dict(choices):
    from ppl.choicemap import Masked

    out = {}
    for path, v in choices.leaves():
        if isinstance(v, Masked):
            val = np.asarray(v.value)
            flag = np.asarray(v.flag)
            flag = flag.reshape(flag.shape + (1,) * (val.ndim - flag.ndim))
            if np.issubdtype(val.dtype, np.floating):
                val = np.where(flag, val, np.nan)
            v = val
        out[var_name(path)] = np.asarray(v)
    return out


def _stats_dict(info):
    """ArviZ ``sample_stats`` arrays from a run's info: the fields of the kernels' typed infos
    (already ArviZ's names: ``acceptance_rate``, ``diverging``, ``step_size``, ``n_steps``,
    ``energy``, ...) or a custom kernel's dict entries; combinator components get a ``k{j}_``
    prefix, a mixture also the ``chosen`` component."""
    out = {}

    def walk(i, prefix):
        fields = getattr(i, "_fields", None)
        if isinstance(i, dict) or fields is not None:
            for k, v in (i.items() if isinstance(i, dict) else zip(fields, i)):
                if isinstance(v, (tuple, list, dict)):
                    walk(v, prefix)
                elif np.ndim(v) >= 2:
                    out[prefix + k] = np.asarray(v)
        elif isinstance(i, (tuple, list)):
            for j, sub in enumerate(i):
                walk(sub, f"{prefix}k{j}_")

    walk(info, "")
    return out


def to_arviz(result, *, model=None, args=(), observations=None, log_likelihood=None,
             posterior_predictive=None, observed_data=None, sample_stats=None):
    """ArviZ ``InferenceData`` of an :class:`inference.mcmc.MCMCResult` (or of a
    :class:`ppl.ChoiceMap`/``dict`` of draws with leading ``(chain, draw)`` axes, e.g. a guide's
    samples ``v[None]``): every stored choice (the ones the kernel moves; observations are not
    stored per draw) in the ``posterior`` group (nested addresses as ``"a/b"``; absent branch
    choices as NaN) and kernel statistics (acceptance rate, ``diverging``, step size) in
    ``sample_stats``. Optional groups, so that ``az.loo``, ``az.waic`` and ``az.compare`` work
    on the result:

    - ``log_likelihood``: pointwise log-likelihoods shaped ``(chain, draw, ...)`` (a choice map
      or dict, e.g. from :func:`inference.predictive.log_likelihood`). Left out (``None``) and
      given ``model``, ``args`` and ``observations``, it is computed with
      :func:`inference.predictive.log_likelihood`; ``False`` leaves the group out.
    - ``posterior_predictive``: draws shaped ``(chain, draw, ...)``, e.g. the output of
      :class:`inference.predictive.Predictive` for an MCMC posterior.
    - ``observed_data``: the observed values (default: ``observations``).
    - ``sample_stats``: extra per-draw statistics ``(chain, draw, ...)``, added to the kernel's.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> res = mcmc.run(jax.random.key(0), mcmc.mh(ppl.select("x")), model.simulate(jax.random.key(1)), 20, n_chains=2)
        >>> idata = to_arviz(res)
        >>> dict(idata.posterior["x"].sizes)
        {'chain': 2, 'draw': 20}
        >>> @ppl.gen
        ... def reg():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(jnp.full(3, mu), 1.0) @ "y"
        >>> obs = {"y": jnp.array([0.1, 0.5, 0.3])}
        >>> draws = {"mu": 0.3 + 0.5 * jax.random.normal(jax.random.key(2), (2, 50))}   # (chain, draw)
        >>> idata = to_arviz(draws, model=reg, observations=obs)
        >>> dict(idata.log_likelihood["y"].sizes), idata.observed_data["y"].shape
        ({'chain': 2, 'draw': 50, 'y_dim_0': 3}, (3,))
    """
    az = _az()
    if hasattr(result, "choices") and hasattr(result, "info"):
        post, stats = _posterior_dict(result.choices), _stats_dict(result.info)
    else:
        from ppl.core import as_choicemap

        post, stats = _posterior_dict(as_choicemap(result, "to_arviz: result")), {}
    stats.update(_arviz_group(sample_stats, "sample_stats"))
    if log_likelihood is None and model is not None and observations is not None:
        from inference.predictive import log_likelihood as pointwise

        log_likelihood = pointwise(model, result, *args, observations=observations, batch_ndims=2)
    if observed_data is None:
        observed_data = observations
    groups = dict(
        posterior=post, sample_stats=stats or None,
        log_likelihood=_arviz_group(log_likelihood, "log_likelihood") or None,
        posterior_predictive=_arviz_group(posterior_predictive, "posterior_predictive") or None,
        observed_data=_arviz_group(observed_data, "observed_data") or None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.from_dict(**{k: v for k, v in groups.items() if v is not None})


def summary(result, var_names=None, **kw):
    """ArviZ's summary table (mean, sd, HDI, MCSE, ``ess_bulk``, ``ess_tail``, ``r_hat``) of the
    continuous and discrete choices of a run (observed, never-moving choices are dropped).

    Examples:
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> res = mcmc.run(jax.random.key(0), mcmc.mh(ppl.select("x")), model.simulate(jax.random.key(1)), 50, n_chains=2)
        >>> list(summary(res).columns)[:2]
        ['mean', 'sd']
    """
    az = _az()
    idata = result.to_arviz() if hasattr(result, "to_arviz") else result
    if var_names is None and hasattr(result, "choices"):
        post = _posterior_dict(result.choices)
        var_names = [k for k, v in post.items()
                     if v.ndim >= 2 and np.nanmax(np.nanstd(v.astype(float), axis=(0, 1)), initial=0.0) > 0] or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.summary(idata, var_names=var_names, **kw)


def _as_chains(x):
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[None]
    return x


def ess(x, method: str = "bulk"):
    """Effective sample size (ArviZ) of draws shaped ``(n_chains, n_draws, ...)`` or ``(n_draws,)``."""
    az = _az()
    return np.asarray(az.ess(_as_chains(x), method=method)) if np.ndim(x) > 2 else float(
        az.ess(_as_chains(x), method=method))


def rhat(x):
    """Rank-normalized split R-hat (ArviZ) of draws shaped ``(n_chains, n_draws, ...)``."""
    az = _az()
    return np.asarray(az.rhat(_as_chains(x))) if np.ndim(x) > 2 else float(az.rhat(_as_chains(x)))


def mcse(x):
    """Monte Carlo standard error of the mean (ArviZ), for ``(n_chains, n_draws[, ...])`` draws."""
    az = _az()
    return np.asarray(az.mcse(_as_chains(x), method="mean")) if np.ndim(x) > 2 else float(
        az.mcse(_as_chains(x), method="mean"))


def mean_within_mcse(x, truth, z: float = 4.0, extra_se: float = 0.0):
    """``(passed, z_score)``: is the mean of MCMC draws ``x`` within ``z`` Monte Carlo standard
    errors (from the ESS, plus ``extra_se`` in quadrature, e.g. a reference's own error) of
    ``truth``?

    Examples:
        >>> x = np.random.default_rng(1).normal(2.0, 1.0, size=(2, 1000))
        >>> mean_within_mcse(x, 2.0)[0]
        True
    """
    x = _as_chains(x)
    se = math.sqrt(mcse(x) ** 2 + extra_se**2)
    score = (float(np.mean(x)) - float(truth)) / se
    return bool(abs(score) <= z), score


def sbc_ranks(truth, draws, key=None):
    """Rank of each true value among its posterior draws (ties broken at random).

    ``truth`` has shape ``(R,)``, ``draws`` ``(R, L)``; ranks are in ``0..L``.

    Examples:
        >>> sbc_ranks(np.array([0.5, -3.0]), np.array([[0.0, 1.0], [0.0, 1.0]])).tolist()
        [1, 0]
    """
    truth = np.asarray(truth)[:, None]
    draws = np.asarray(draws)
    rng = np.random.default_rng(0 if key is None else key)
    less = np.sum(draws < truth, axis=1)
    ties = np.sum(draws == truth, axis=1)
    return less + np.array([rng.integers(0, t + 1) for t in ties])


def rank_uniformity(ranks, n_ranks: int, n_bins: int | None = None):
    """Chi-square test that SBC ranks (values ``0..n_ranks-1``) are uniform: ``(statistic, p)``.

    Examples:
        >>> r = np.random.default_rng(0).integers(0, 10, size=1000)
        >>> bool(rank_uniformity(r, 10)[1] > 0.001)
        True
    """
    from scipy import stats

    ranks = np.asarray(ranks)
    n_bins = n_bins or min(n_ranks, 20)
    if n_ranks % n_bins:
        raise ValueError(f"rank_uniformity: n_ranks={n_ranks} must be a multiple of n_bins={n_bins}")
    counts = np.bincount(ranks * n_bins // n_ranks, minlength=n_bins)
    res = stats.chisquare(counts)
    return float(res.statistic), float(res.pvalue)


def geweke_z(x, first: float = 0.1, last: float = 0.5):
    """Geweke's z-score: mean of the first ``first`` fraction of a chain minus the mean of the last
    ``last`` fraction, over their Monte Carlo standard errors (ESS-based).

    Examples:
        >>> x = np.random.default_rng(2).normal(size=4000)
        >>> bool(abs(geweke_z(x)) < 4)
        True
    """
    x = np.asarray(x, dtype=float).ravel()
    n = len(x)
    a, b = x[: int(first * n)], x[n - int(last * n):]
    se = math.sqrt(mcse(a) ** 2 + mcse(b) ** 2)
    return (a.mean() - b.mean()) / se


def _arviz_group(values, name):
    """A ``{var_name: numpy array}`` dict of a choice map or dict (``None``/``False``: empty)."""
    if values is None or values is False:
        return {}
    from ppl.core import as_choicemap

    return _posterior_dict(as_choicemap(values, f"to_arviz: {name}"))
