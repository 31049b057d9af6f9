"""Calibration checks of whole inference algorithms against a model's own simulations.

- :func:`sbc`: simulation-based calibration (Talts et al. 2018). Draw ``(theta, y)`` from the
  model, run the inference algorithm on ``y``, and record the rank of the true ``theta`` among
  the posterior draws. A correct algorithm gives uniform ranks; the result carries a chi-square
  test of uniformity per latent component (:func:`inference.diagnostics.mcmc.rank_uniformity`).
- :func:`plot_rank_histogram`: the rank histogram with the band a uniform histogram stays in.
- :func:`geweke_test`: Geweke's (2004) joint-distribution test of a posterior transition kernel.
  The *marginal-conditional* simulator draws ``(theta, y)`` independently from the model; the
  *successive-conditional* simulator alternates the kernel under test (``theta | y``) with a
  fresh ``y ~ p(y | theta)``. Both target the joint distribution when the kernel is correct;
  the test compares the means of test functions (default: each latent value and its square) by
  z-scores, the Markov chain's standard error from batch means.

(:func:`inference.diagnostics.mcmc.geweke_z` is a different, older diagnostic of the same author:
it compares the start and the end of one chain to detect non-convergence.)

Example (exact conjugate posterior: ranks are uniform):
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model():
    ...     mu = ppl.normal(0.0, 1.0) @ "mu"
    ...     return ppl.normal(jnp.full(4, mu), 1.0) @ "y"
    >>> def exact(key, obs):   # posterior N(sum(y) / 5, 1 / 5), 99 draws
    ...     y = obs["y"]
    ...     return {"mu": jnp.sum(y) / 5 + jax.random.normal(key, (99,)) / jnp.sqrt(5.0)}
    >>> res = sbc(jax.random.key(0), model, (), ["y"], exact, 100, vectorize=True)
    >>> res.ranks["mu"].shape, res.passed
    ((100,), True)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from inference.diagnostics.checks import batch_means_se
from inference.diagnostics.mcmc import rank_uniformity, sbc_ranks, var_name

__all__ = ["SBCResult", "sbc", "plot_rank_histogram", "GewekeResult", "geweke_test"]


@dataclasses.dataclass
class SBCResult:
    """Ranks and uniformity tests of :func:`sbc`.

    ``ranks[name]``: integer ranks in ``0..n_draws``, shaped ``(n_sims, *site_shape)``;
    ``statistic[name]`` and ``pvalue[name]``: the chi-square statistic and p-value of each
    component (shaped ``site_shape``); ``passed``: every p-value is above ``alpha`` divided by
    the number of components tested (Bonferroni), i.e. the family-wise false-alarm rate of a
    correct algorithm is at most ``alpha``.
    """

    ranks: dict
    n_draws: int
    n_bins: int
    statistic: dict
    pvalue: dict
    alpha: float

    @property
    def n_tests(self) -> int:
        return int(sum(np.size(p) for p in self.pvalue.values()))

    @property
    def min_pvalue(self) -> float:
        return float(min(np.min(p) for p in self.pvalue.values()))

    @property
    def passed(self) -> bool:
        return bool(self.min_pvalue > self.alpha / self.n_tests)

    def __repr__(self):
        sims = next(iter(self.ranks.values())).shape[0]
        return (f"SBCResult({sims} simulations, {self.n_draws} draws each, {self.n_tests} components, "
                f"min p-value {self.min_pvalue:.3g}, passed={self.passed})")


def _path(addr) -> tuple:
    return tuple(addr) if isinstance(addr, tuple) else (addr,)


def _split_choices(choices, observed_addrs, fn: str):
    """``(observed_leaves, latent_leaves)`` of a choice map: lists of ``(path, value)``."""
    from ppl.errors import AddressError

    observed = [_path(a) for a in observed_addrs]
    leaves = choices.leaves()
    for a in observed:
        if not any(p[: len(a)] == a for p, _ in leaves):
            have = ", ".join(repr(var_name(p)) for p, _ in leaves)
            raise AddressError(f"{fn}: observed address {var_name(a)!r} is not a choice of the model "
                               f"(its choices are {have}); pass the addresses of the data in observed_addrs")
    obs = [(p, v) for p, v in leaves if any(p[: len(a)] == a for a in observed)]
    lat = [(p, v) for p, v in leaves if not any(p[: len(a)] == a for a in observed)]
    if not lat:
        raise AddressError(f"{fn}: every choice of the model is in observed_addrs {list(observed_addrs)}; "
                           "leave the latent addresses out")
    return obs, lat


_CHUNK = 100


def _simulate_choices(key, *, model, args, n):
    """The choices of ``n`` independent ``model.simulate`` draws, stacked; simulated in chunks of
    ``_CHUNK`` so that one compiled program per model and argument structure serves every ``n``."""
    keys = jax.random.split(key, -(-n // _CHUNK))
    chunks = [_simulate_chunk(k, model=model, args=args, n=_CHUNK) for k in keys]
    return jax.tree.map(lambda *v: np.concatenate([np.asarray(x) for x in v])[:n], *chunks)


def _simulate_chunk(key, *, model, args, n):
    from ppl.staging import staged

    global _simulate_choices_staged
    if _simulate_choices_staged is None:
        @staged(static_argnames=("model", "n"), packed_argnames=("args",))
        def run(key, *, model, args, n):
            return jax.vmap(lambda k: model.simulate(k, *args).get_choices())(jax.random.split(key, n))

        _simulate_choices_staged = run
    return _simulate_choices_staged(key, model=model, args=args, n=n)


_simulate_choices_staged = None


def _geweke_chain(key, *, model, args, transition, lat_paths, n_steps):
    """Choices of the successive-conditional chain, stacked over ``n_steps`` (one compiled program
    per model, argument structure, transition and length)."""
    from ppl.staging import staged

    global _geweke_chain_staged
    if _geweke_chain_staged is None:
        @staged(static_argnames=("model", "transition", "lat_paths", "n_steps"), packed_argnames=("args",))
        def run(key, *, model, args, transition, lat_paths, n_steps):
            from ppl.arguments import as_choicemap
            from ppl.choicemap import ChoiceMap

            def step(tr, k):
                k1, k2 = jax.random.split(k)
                out = transition(k1, tr)
                tr = out[0] if isinstance(out, tuple) else out
                values = dict(as_choicemap(tr.get_choices(), "geweke_test: trace choices").leaves())
                latents = ChoiceMap.from_leaves([(p, values[p]) for p in lat_paths])
                tr, _ = model.generate(k2, latents, *args)
                return tr, tr.get_choices()

            k0, k1 = jax.random.split(key)
            return jax.lax.scan(step, model.simulate(k0, *args), jax.random.split(k1, n_steps))[1]

        _geweke_chain_staged = run
    return _geweke_chain_staged(key, model=model, args=args, transition=transition, lat_paths=lat_paths,
                                n_steps=n_steps)


_geweke_chain_staged = None


def _default_bins(n_ranks: int, n_sims: int) -> int:
    cap = max(2, min(20, n_sims // 5))
    for b in range(cap, 1, -1):
        if n_ranks % b == 0:
            return b
    return 0


def sbc(key, model, args, observed_addrs, inference_fn, n_sims: int, *, n_bins: int | None = None,
        alpha: float = 0.01, vectorize: bool = False) -> SBCResult:
    """Simulation-based calibration of ``inference_fn`` on ``model(*args)``.

    For each of ``n_sims`` simulations, ``(theta, y) ~ model``, the observations ``y`` (the
    choices at ``observed_addrs`` and below) go to ``inference_fn(key, observations)``, which
    returns posterior draws of the latent choices (all other choices) as a ``ppl.ChoiceMap`` or
    ``{address: array}`` dict with a leading axis of ``L`` draws (e.g. thinned MCMC draws,
    importance resamples, guide samples). The rank of each true latent component among its ``L``
    draws (ties broken at random) is uniform on ``0..L`` when the draws are exact posterior draws.
    The ranks are grouped into ``n_bins`` bins (a divisor of ``L + 1``; default: the largest
    divisor of ``L + 1`` up to ``min(20, n_sims // 5)``) and tested with a chi-square test.
    Choose ``L`` with ``L + 1`` divisible by 10 or 20 (e.g. 99 or 199). MCMC draws should be
    thinned to be nearly independent; correlated draws make the histogram look non-uniform.

    ``vectorize=True`` runs ``jax.vmap(inference_fn)`` over all simulations at once (it must be
    JAX-traceable); otherwise it is called once per simulation (any Python code is fine).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(mu, 1.0) @ "y"
        >>> too_narrow = lambda key, obs: {"mu": obs["y"] / 2 + 0.2 * jax.random.normal(key, (49,))}
        >>> sbc(jax.random.key(1), model, (), ["y"], too_narrow, 200).passed   # true sd is 0.71
        False
    """
    import jax.numpy as jnp

    from ppl.arguments import as_choicemap
    from ppl.choicemap import ChoiceMap
    from ppl.errors import ArgumentError, ShapeError

    if not isinstance(args, tuple):
        raise ArgumentError(f"sbc: args must be a tuple of the model's arguments, got {type(args).__name__}")
    if isinstance(observed_addrs, (str, tuple)):
        observed_addrs = [observed_addrs]
    if int(n_sims) < 2:
        raise ArgumentError(f"sbc: n_sims={n_sims}; use at least 100 simulations for a useful test")
    k_sim, k_inf, k_tie = jax.random.split(key, 3)
    sims = _simulate_choices(k_sim, model=model, args=args, n=int(n_sims))
    obs_leaves, lat_leaves = _split_choices(sims, observed_addrs, "sbc")
    inf_keys = jax.random.split(k_inf, n_sims)
    obs_batched = ChoiceMap.from_leaves(obs_leaves)
    if vectorize:
        batched = as_choicemap(jax.vmap(inference_fn)(inf_keys, obs_batched), "sbc: inference_fn result")
        per_sim = None
    else:
        per_sim = []
        obs_np = [(p, np.asarray(v)) for p, v in obs_leaves]
        for i in range(n_sims):
            obs_i = ChoiceMap.from_leaves([(p, v[i]) for p, v in obs_np])
            out = as_choicemap(inference_fn(inf_keys[i], obs_i), "sbc: inference_fn result")
            per_sim.append(dict(out.leaves()))
        batched = None
    got = dict(batched.leaves()) if batched is not None else None
    seed = np.asarray(jax.random.key_data(k_tie)).ravel().tolist()
    ranks, stat, pval, n_draws, bins = {}, {}, {}, None, n_bins
    for path, truth in lat_leaves:
        name = var_name(path)
        truth = np.asarray(truth)
        try:
            draws = got[path] if got is not None else [d[path] for d in per_sim]
        except KeyError:
            raise ShapeError(f"sbc: inference_fn returned no draws at address {name!r}; return draws of "
                             "every latent choice, shaped (n_draws, *site_shape)") from None
        draws = np.asarray(jnp.stack(draws) if per_sim is not None else draws)
        site_shape = truth.shape[1:]
        if draws.ndim != truth.ndim + 1 or draws.shape[2:] != site_shape:
            raise ShapeError(f"sbc: draws at {name!r} have shape {draws.shape[1:]} per simulation; expected "
                             f"(n_draws, {', '.join(map(str, site_shape))}) with a leading axis of draws")
        L = draws.shape[1]
        if n_draws is None:
            n_draws = L
            bins = n_bins or _default_bins(L + 1, n_sims)
            if bins < 2 or (L + 1) % bins:
                raise ArgumentError(f"sbc: {L} draws give ranks 0..{L}; n_bins must divide {L + 1} and be "
                                    f"at least 2 (got {bins}): use e.g. 99 or 199 draws")
        elif L != n_draws:
            raise ShapeError(f"sbc: {L} draws at {name!r} but {n_draws} at another address; return the "
                             "same number of draws for every latent choice")
        t2 = truth.reshape(n_sims, -1)
        d2 = draws.reshape(n_sims, L, -1)
        r = np.stack([sbc_ranks(t2[:, j], d2[:, :, j], key=seed + [len(ranks), j]) for j in range(t2.shape[1])], -1)
        tests = [rank_uniformity(r[:, j], L + 1, bins) for j in range(r.shape[1])]
        ranks[name] = r.reshape(truth.shape)
        stat[name] = np.array([t[0] for t in tests]).reshape(site_shape)
        pval[name] = np.array([t[1] for t in tests]).reshape(site_shape)
    return SBCResult(ranks, n_draws, bins, stat, pval, float(alpha))


def plot_rank_histogram(ranks, n_draws: int | None = None, *, n_bins: int | None = None, names=None,
                        path: str | None = None, title: str | None = None):
    """Histogram(s) of SBC ranks with the 99% band of each bin's count under uniform ranks.

    ``ranks`` is an :class:`SBCResult` (one panel per latent component, or per name in
    ``names``) or an integer array of ranks in ``0..n_draws``. Returns the matplotlib figure and
    saves it to ``path`` when given. matplotlib is imported only here.

    Example:
        >>> import numpy as np
        >>> fig = plot_rank_histogram(np.random.default_rng(0).integers(0, 100, 500), 99)
        >>> fig.axes[0].get_xlabel()
        'rank of the true value among 99 draws'
    """
    import matplotlib.pyplot as plt
    from scipy import stats

    if isinstance(ranks, SBCResult):
        n_draws, n_bins = ranks.n_draws, n_bins or ranks.n_bins
        panels = []
        for name, r in ranks.ranks.items():
            if names is not None and name not in names:
                continue
            flat = r.reshape(r.shape[0], -1)
            for j in range(flat.shape[1]):
                panels.append((name if flat.shape[1] == 1 else f"{name}[{j}]", flat[:, j]))
    else:
        r = np.asarray(ranks)
        if n_draws is None:
            raise ValueError("plot_rank_histogram: give n_draws (ranks are in 0..n_draws) with a rank array")
        panels = [("ranks", r.ravel())]
    n_bins = n_bins or _default_bins(n_draws + 1, len(panels[0][1])) or 1
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    edges = np.arange(n_bins + 1) * (n_draws + 1) / n_bins - 0.5
    for ax, (name, r) in zip(axes.flat, panels):
        n = len(r)
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1.0 / n_bins)
        ax.axhspan(lo, hi, color="0.85", label="99% band, uniform")
        ax.axhline(n / n_bins, color="0.5", lw=1)
        ax.hist(r, bins=edges, color="C0", edgecolor="white")
        ax.set_xlabel(f"rank of the true value among {n_draws} draws")
        ax.set_ylabel("count")
        ax.set_title(name)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


@dataclasses.dataclass
class GewekeResult:
    """z-scores of :func:`geweke_test`, one per test function (``z[name]``, shaped like its value),
    the means under both simulators, and the two-sided threshold (Bonferroni over all components
    at level ``alpha``) that ``passed`` compares ``|z|`` with."""

    z: dict
    marginal_mean: dict
    successive_mean: dict
    threshold: float

    @property
    def max_abs_z(self) -> float:
        return float(max(np.max(np.abs(v)) for v in self.z.values()))

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_z <= self.threshold)

    def __repr__(self):
        zs = ", ".join(f"{k}: {np.array2string(np.asarray(v), precision=2)}" for k, v in self.z.items())
        return f"GewekeResult(z={{{zs}}}, threshold={self.threshold:.2f}, passed={self.passed})"


def _default_tests(lat_paths):
    def g(choices):
        values = dict(choices.leaves())
        out = {}
        for p in lat_paths:
            v = values[p].astype(float) if hasattr(values[p], "astype") else values[p]
            out[var_name(p)] = v
            out[var_name(p) + "^2"] = v * v
        return out

    return g


def geweke_test(key, model, args, observed_addrs, transition, n_samples: int, *, n_marginal: int | None = None,
                test_functions=None, burn_in: int = 100, n_batches: int = 20, alpha: float = 0.01) -> GewekeResult:
    """Geweke's joint-distribution test of ``transition``, a posterior kernel for ``model(*args)``.

    ``transition(key, trace) -> trace`` (or ``(trace, info)``, as every ``inference.mcmc``
    kernel returns) must leave ``p(latents | observations)`` invariant, moving only latent
    choices. The successive-conditional chain alternates it with a fresh draw of the choices at
    ``observed_addrs`` given the latents (``model.generate`` with the latents constrained), for
    ``burn_in + n_samples`` steps in one ``lax.scan``; the marginal-conditional sample is
    ``n_marginal`` (default ``n_samples``) independent ``model.simulate`` draws. The mean of each
    test function (``test_functions``: ``{name: fn(choices) -> array}``; default each latent
    choice and its square) is compared: ``z = (marginal - successive) / se``, the chain's standard
    error by ``n_batches`` batch means. A kernel that samples the wrong posterior moves the
    successive chain away from the prior and shows as large ``|z|``.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(jnp.full(3, mu), 1.0) @ "y"
        >>> def gibbs(key, tr):   # exact posterior draw N(sum(y) / 4, 1 / 4)
        ...     y = tr.get_choices()["y"]
        ...     mu = jnp.sum(y) / 4 + jax.random.normal(key) / 2
        ...     return model.generate(key, ppl.ChoiceMap({"mu": mu, "y": y}))[0]
        >>> geweke_test(jax.random.key(0), model, (), ["y"], gibbs, 2000).passed
        True
    """
    import jax.numpy as jnp
    from scipy import stats

    from ppl.arguments import as_choicemap
    from ppl.errors import ArgumentError

    if not isinstance(args, tuple):
        raise ArgumentError(f"geweke_test: args must be a tuple of the model's arguments, got {type(args).__name__}")
    if isinstance(observed_addrs, (str, tuple)):
        observed_addrs = [observed_addrs]
    if n_samples < 2 * n_batches:
        raise ArgumentError(f"geweke_test: n_samples={n_samples} is too few for {n_batches} batch means; "
                            f"use at least {2 * n_batches} (thousands for a sensitive test)")
    n_marginal = n_samples if n_marginal is None else n_marginal
    k_chain, k_marg = jax.random.split(key)
    marginal_choices = _simulate_choices(k_marg, model=model, args=args, n=int(n_marginal))
    _, lat = _split_choices(as_choicemap(marginal_choices), observed_addrs, "geweke_test")
    lat_paths = tuple(p for p, _ in lat)
    if test_functions is None:
        g = _default_tests(lat_paths)
    else:
        def g(choices):
            return {k: jnp.asarray(f(choices), float) for k, f in test_functions.items()}

    chain = _geweke_chain(k_chain, model=model, args=args, transition=transition, lat_paths=lat_paths,
                          n_steps=burn_in + n_samples)
    chain = jax.tree.map(lambda v: v[burn_in:], chain)
    successive = jax.vmap(g)(chain)
    marginal = jax.vmap(g)(marginal_choices)
    z, mm, sm = {}, {}, {}
    for name in successive:
        s = np.asarray(successive[name], np.float64).reshape(n_samples, -1)
        m = np.asarray(marginal[name], np.float64).reshape(n_marginal, -1)
        se = np.sqrt(m.var(0, ddof=1) / n_marginal
                     + np.array([batch_means_se(s[:, j], n_batches) for j in range(s.shape[1])]) ** 2)
        shape = np.shape(successive[name])[1:]
        z[name] = ((m.mean(0) - s.mean(0)) / se).reshape(shape)
        mm[name], sm[name] = m.mean(0).reshape(shape), s.mean(0).reshape(shape)
    n_tests = sum(np.size(v) for v in z.values())
    threshold = float(stats.norm.ppf(1 - alpha / (2 * n_tests)))
    return GewekeResult(z, mm, sm, threshold)
