"""Predictive distributions and pointwise log-likelihoods (NumPyro's ``Predictive`` and
``log_likelihood``), written against the generative function interface.

- :class:`Predictive`: ``Predictive(model, posterior=None, n_samples=None, return_sites=None)``
  called as ``pred(key, *args)`` draws from the *prior predictive* (no posterior: ``n_samples``
  independent runs of the model) or the *posterior predictive* distribution: for every posterior
  draw of the latent choices, one run of ``model.generate(key, draw, *args)``, which keeps the
  draw and samples every other choice (the observed/predicted sites) from the model. ``args``
  may differ from the ones used for inference (new inputs ``x``): that is the main use.
- :func:`log_likelihood`: ``log p(y_i | draw)`` of every observed site, per element of vector
  sites, for every posterior draw (the input of LOO/WAIC; see
  :func:`inference.diagnostics.mcmc.to_arviz`).

Posteriors accepted (the draws keep their leading axes in the output):

- an :class:`inference.mcmc.MCMCResult` or its ``res.choices``: leading axes ``(n_chains,
  n_samples)``. Only the choices the kernel moves are draws; a latent outside the kernel's
  selection is sampled anew from the prior by :class:`Predictive` (and is an error in
  :func:`log_likelihood`, which needs every latent);
- a :class:`ppl.ChoiceMap` or ``dict`` of latent draws (e.g. a guide's ``sample_posterior``)
  with ``batch_ndims`` leading axes (default 1: one sample axis; 2 for ``(chain, draw)``);
- a weighted :class:`inference.smc.ParticleCollection` (``importance.sample``, ``smc.*``):
  :class:`Predictive` resamples ``n_samples`` particles by weight (default: as many as there
  are particles; ``resampling="multinomial"``, i.i.d. given the weights) and
  :func:`log_likelihood` gives one value per particle (unweighted). The latent choices of a
  particle collection are the ones stored per particle (shared values are the observations).

Everything runs in one compiled program per model, argument structure, and posterior shapes:
new data values (new ``x``, new draws of the same shapes) do not recompile. The draws are
vectorized with ``jax.vmap`` and lane keys (:mod:`ppl.keys`); the same key gives the same bits.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model(x):
    ...     w = ppl.normal(0.0, 1.0) @ "w"
    ...     return ppl.normal(w * x, 0.1) @ "y"
    >>> prior = Predictive(model, n_samples=1000)(jax.random.key(0), jnp.arange(3.0))
    >>> prior["w"].shape, prior["y"].shape
    ((1000,), (1000, 3))
    >>> draws = {"w": jnp.full(500, 2.0)}   # e.g. a guide's posterior samples
    >>> post = Predictive(model, draws)(jax.random.key(1), jnp.array([1.0, 5.0]))
    >>> post.addresses(), post["y"].shape   # the latent "w" is not returned by default
    (['y'], (500, 2))
    >>> bool(jnp.allclose(post["y"].mean(0), jnp.array([2.0, 10.0]), atol=0.02))
    True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ppl import AddressError, ArgumentError, ChoiceMap, Masked, ShapeError, deterministics, select
from ppl.core import Interceptor, as_args_tuple, as_choicemap, intercept
from ppl.errors import fmt_addr
from ppl.keys import LANE_AXES, lanes

from .smc._util import check_n_particles, staged

__all__ = ["Predictive", "log_likelihood"]


# ------------------------------------------------------------------------------ posteriors
def _is_particles(x) -> bool:
    from .smc.particles import ParticleCollection

    return isinstance(x, ParticleCollection)


def _particle_latents(ps) -> tuple:
    """The choice paths of a particle collection stored per particle (the rest, shared by all
    particles, are the observations)."""
    stored = dict(ps.stored_traces.get_choices().leaves())
    full = dict(ps.traces.get_choices().leaves())

    def nd(v):
        return np.ndim(v.value if isinstance(v, Masked) else v)

    return tuple(p for p, v in full.items() if p in stored and nd(stored[p]) == nd(v))


def _as_draws(posterior, batch_ndims, where):
    """``(draws, batch_ndims)``: the latent draws of a posterior as a choice map with leading
    batch axes (particle collections are handled by the callers)."""
    from .mcmc.runner import DrawMap, MCMCResult

    if isinstance(posterior, MCMCResult):
        posterior = posterior.choices
    if isinstance(posterior, DrawMap):
        return ChoiceMap(posterior), 2 if batch_ndims is None else batch_ndims
    if isinstance(posterior, (dict, ChoiceMap)):
        return as_choicemap(posterior, f"{where}: posterior"), 1 if batch_ndims is None else batch_ndims
    raise ArgumentError(
        f"{where}: posterior must be an mcmc.run result (or its .choices), a ppl.ChoiceMap or dict of "
        f"latent draws with leading sample axes, or a weighted ParticleCollection; got "
        f"{type(posterior).__name__}")


def _batch_shape(draws: ChoiceMap, batch_ndims: int, where: str) -> tuple:
    """The common leading ``batch_ndims`` axes of every draw (an ArgumentError if they differ)."""
    if not isinstance(batch_ndims, int) or isinstance(batch_ndims, bool) or batch_ndims < 1:
        raise ArgumentError(f"{where}: batch_ndims must be a positive int (the number of leading sample "
                            f"axes of the posterior draws), got {batch_ndims!r}")
    shape = None
    for path, v in draws.leaves():
        a = v.value if isinstance(v, Masked) else v
        s = tuple(np.shape(a))
        if len(s) < batch_ndims:
            raise ShapeError(
                f"{where}: the posterior draws at address {fmt_addr(path)} have shape {s}, fewer than "
                f"batch_ndims={batch_ndims} leading sample axes; pass draws with a leading sample axis "
                "(or set batch_ndims)")
        if shape is None:
            shape, first = s[:batch_ndims], path
        elif s[:batch_ndims] != shape:
            raise ShapeError(
                f"{where}: the posterior draws at address {fmt_addr(path)} have leading axes "
                f"{s[:batch_ndims]}, but those at {fmt_addr(first)} have {shape}; every address needs "
                f"the same {batch_ndims} leading sample axes (batch_ndims={batch_ndims})")
    if shape is None:
        raise ArgumentError(f"{where}: the posterior holds no draws (an empty choice map)")
    return shape


def _flatten(tree, bnd, size):
    return jax.tree_util.tree_map(lambda x: jnp.reshape(x, (size,) + jnp.shape(x)[bnd:]), tree)


def _unflatten(tree, batch_shape):
    return jax.tree_util.tree_map(lambda x: jnp.reshape(x, tuple(batch_shape) + jnp.shape(x)[1:]), tree)


def _from_pairs(pairs) -> ChoiceMap:
    if len(pairs) == 1 and pairs[0][0] == ():
        return ChoiceMap.value(pairs[0][1])
    return ChoiceMap({p: v for p, v in pairs})


def _covered(path, paths) -> bool:
    return any(path[: len(q)] == q for q in paths)


def _paths(addrs, where) -> tuple:
    if isinstance(addrs, (str, tuple)):
        addrs = [addrs]
    out = []
    for a in addrs:
        if isinstance(a, str):
            out.append((a,))
        elif isinstance(a, tuple) and a and all(isinstance(p, str) for p in a):
            out.append(a)
        else:
            raise ArgumentError(f"{where}: return_sites must be addresses (strings, or tuples of strings for "
                                f"nested addresses), got {a!r}")
    return tuple(out)


# ------------------------------------------------------------------------------ prediction
def _pick(choices: ChoiceMap, keep, drop, where):
    if keep is None:
        return choices.filter(~select(*drop)) if drop else choices
    have = [p for p, _ in choices.leaves()]
    for q in keep:
        if not any(p[: len(q)] == q for p in have):
            raise AddressError(
                f"{where}: return_sites names address {fmt_addr(q)}, which the model does not visit with "
                f"these arguments (its addresses: {[p[0] if len(p) == 1 else p for p in have]})")
    return choices.filter(select(*keep))


def _without_deterministics(model, args, chm: ChoiceMap) -> ChoiceMap:
    """``chm`` without the model's ``ppl.deterministic`` addresses: MCMC draws store deterministic
    values beside the choices, but they are recomputed from the choices, never given."""
    if chm.is_empty():
        return chm
    det = jax.eval_shape(lambda k: deterministics(model.simulate(k, *args)), jax.random.key(0))
    paths = [p for p, _ in det.leaves()]
    if not paths:
        return chm
    return ChoiceMap.from_leaves([(p, v) for p, v in chm.leaves() if not _covered(p, paths)])


def _predict(key, draws, particles, *, model, args, n, batch_ndims, keep, drop, latents, resampling):
    where = "Predictive"
    if particles is not None:  # weighted particles: resample n of them, keep their latents
        key, sub = jax.random.split(key)
        trs = particles.sample(sub, n, resampling=resampling)
        batch_shape = (n,)
        flat = trs.get_choices().filter(select(*latents)) if latents else ChoiceMap.empty()
    elif draws is None:  # prior predictive
        batch_shape, flat = (n,), ChoiceMap.empty()
    else:
        batch_shape = tuple(jnp.shape(jax.tree_util.tree_leaves(draws)[0])[:batch_ndims])
        flat = _flatten(draws, batch_ndims, math.prod(batch_shape))
    size = math.prod(batch_shape)

    def one(k, c):
        tr, _ = model.generate(k, _without_deterministics(model, args, c), *args)
        values = tr.get_choices()
        det = deterministics(tr)
        return _pick(values if det.is_empty() else values | det, keep, drop, where)

    out = jax.vmap(one, in_axes=(LANE_AXES, 0))(lanes(key, size), flat)
    return _unflatten(out, batch_shape)


_predict_staged = staged(("model", "n", "batch_ndims", "keep", "drop", "latents", "resampling"), ("args",))(_predict)


class Predictive:
    """Prior or posterior predictive samples of ``model``: ``Predictive(model, posterior=None,
    n_samples=None, return_sites=None, batch_ndims=None, resampling="multinomial")`` called as
    ``pred(key, *args)``, returning a :class:`ppl.ChoiceMap` whose leaves have the posterior's
    leading axes (``(n_chains, n_samples)`` for MCMC, ``(n_samples,)`` otherwise).

    - No ``posterior``: the prior predictive, ``n_samples`` (required) runs of ``model(*args)``;
      every choice and ``ppl.deterministic`` site is returned by default.
    - ``posterior`` (see :mod:`inference.predictive` for the accepted kinds): one run of
      ``model.generate(key, draw, *args)`` per draw; by default every choice *not* in the
      posterior is returned (the observed/predicted sites, and latents the posterior lacks), and
      every ``ppl.deterministic`` site (recomputed from the draw and the new arguments).
      ``n_samples`` is the number of particles resampled from a weighted ``ParticleCollection``
      (default: its number of particles); with draws (MCMC, a choice map) there is one prediction
      per draw and ``n_samples`` must be left out.
    - ``return_sites``: addresses to return (strings, or tuples for nested addresses).
    - ``batch_ndims``: the number of leading sample axes of a choice-map posterior (default 1;
      MCMC results always have 2).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import importance
        >>> @ppl.gen
        ... def model(n):
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(jnp.full(n, mu), 1.0) @ "y"
        >>> ps = importance.sample(jax.random.key(0), model, (2,), {"y": jnp.array([1.0, 1.0])}, 2000)
        >>> pred = Predictive(model, ps, n_samples=400, return_sites=["mu", "y"])
        >>> out = pred(jax.random.key(1), 5)   # 5 new observations
        >>> out.addresses(), out["mu"].shape, out["y"].shape
        (['mu', 'y'], (400,), (400, 5))
    """

    def __init__(self, model, posterior=None, n_samples=None, return_sites=None, batch_ndims=None,
                 resampling: str = "multinomial"):
        from .smc.resampling import check_resampling

        where = "Predictive"
        self.model = model
        self.posterior = posterior
        self.return_sites = None if return_sites is None else _paths(return_sites, where)
        self.resampling = resampling
        self.batch_ndims = None
        self.n_samples = None
        if posterior is None:
            if n_samples is None:
                raise ArgumentError("Predictive: the prior predictive (no posterior) needs n_samples, e.g. "
                                    "Predictive(model, n_samples=1000)")
            self.n_samples = check_n_particles(n_samples, where, "n_samples")
            self._draws, self._latents = None, ()
        elif _is_particles(posterior):
            check_resampling(resampling, where)
            self.n_samples = (posterior.n_particles if n_samples is None
                              else check_n_particles(n_samples, where, "n_samples"))
            self._draws, self._latents = None, _particle_latents(posterior)
            self.batch_ndims = 1
        else:
            if n_samples is not None:
                raise ArgumentError(
                    "Predictive: n_samples is for the prior predictive and for weighted particles; with "
                    "posterior draws (MCMC, a choice map) there is one prediction per draw. Subsample the "
                    "draws instead, e.g. {addr: v[::10] for addr, v in draws.items()}")
            self._draws, self.batch_ndims = _as_draws(posterior, batch_ndims, where)
            _batch_shape(self._draws, self.batch_ndims, where)
            self._latents = tuple(p for p, _ in self._draws.leaves())

    def __call__(self, key, *args):
        """Predictive samples for the model's arguments ``args`` (may differ from training)."""
        args = as_args_tuple(args, "Predictive")
        keep = self.return_sites
        drop = None if keep is not None else self._latents
        particles = self.posterior if self._draws is None and self.posterior is not None else None
        try:
            return _predict_staged(key, self._draws, particles, model=self.model, args=args, n=self.n_samples,
                                   batch_ndims=self.batch_ndims, keep=keep, drop=drop, latents=self._latents,
                                   resampling=self.resampling)
        except ShapeError as e:
            if self.batch_ndims is None:
                raise
            raise ShapeError(f"Predictive: {e} (the posterior draws have {self.batch_ndims} leading sample "
                             "axes, batch_ndims; check it, and that the new arguments keep the shapes of "
                             "the latent choices)") from None

    def __repr__(self):
        kind = "prior" if self.posterior is None else type(self.posterior).__name__
        return f"Predictive({getattr(self.model, 'name', self.model)!r}, posterior={kind})"


# ------------------------------------------------------------------------------ log-likelihood
class _PointwiseLogProb(Interceptor):
    """Records the elementwise log density of the observed sites (by path) while tracing."""

    def __init__(self, paths):
        self.paths = frozenset(paths)
        self.records: dict = {}

    def handles(self, path: tuple) -> bool:
        return tuple(path) in self.paths

    def observe(self, path, gf, d, value, old_value):
        self.records[tuple(path)] = d.log_prob(value)
        return value, 0.0, old_value


def _mask_like(flag, lp):
    flag = jnp.asarray(flag, dtype=bool)
    if flag.ndim > jnp.ndim(lp):
        return lp
    return jnp.where(jnp.reshape(flag, flag.shape + (1,) * (jnp.ndim(lp) - flag.ndim)), lp, 0.0)


def _loglik(draws, observations, *, model, args, batch_ndims):
    obs_paths = [p for p, _ in observations.leaves()]
    obs_leaves = dict(observations.leaves())
    leaf = jax.tree_util.tree_leaves(draws)[0]
    batch_shape = tuple(jnp.shape(leaf)[:batch_ndims])
    size = math.prod(batch_shape)
    given = [p for p, _ in draws.leaves()] + obs_paths

    def one(c):
        c = _without_deterministics(model, args, c)
        rec = _PointwiseLogProb(obs_paths)
        with intercept(rec):
            tr, _ = model.generate(jax.random.key(0), c | observations, *args)
        missing = [p for p, _ in tr.get_choices().leaves() if not _covered(p, given)]
        if missing:
            raise AddressError(
                f"log_likelihood: the model samples {', '.join(fmt_addr(p) for p in missing)}, which is "
                "neither in the posterior draws nor in observations; the log-likelihood needs a value for "
                "every latent choice (an MCMC kernel that does not move a latent does not store it: pass "
                "its value in the posterior draws)")
        scores = dict(tr.get_scores().leaves())
        out = []
        for p in obs_paths:
            s = scores.get(p)
            if s is None:
                raise AddressError(f"log_likelihood: observation at address {fmt_addr(p)} is not a choice of "
                                   "the model (check the address and the model's arguments)")
            if p in rec.records and not isinstance(s, Masked) and jnp.ndim(s) == 0:
                lp = rec.records[p]  # a site of the model itself: per element of the site
            elif isinstance(s, Masked):  # inside a branch: its score where the branch is taken
                lp = _mask_like(s.flag, s.value)
            else:  # inside a combinator: one value per copy / time step
                lp = s
            o = obs_leaves[p]
            if isinstance(o, Masked):  # missing observations contribute nothing
                lp = _mask_like(o.flag, lp)
            out.append((p, lp))
        return _from_pairs(out)

    return _unflatten(jax.vmap(one)(_flatten(draws, batch_ndims, size)), batch_shape)


_loglik_staged = staged(("model", "batch_ndims"), ("args",))(_loglik)


def log_likelihood(model, posterior, *args, observations, batch_ndims=None):
    """Pointwise log-likelihood ``log p(y_i | draw; args)`` of every observed site for every
    posterior draw: a :class:`ppl.ChoiceMap` with the addresses of ``observations``, each leaf
    shaped ``batch_shape + site_batch_shape`` (as NumPyro's ``log_likelihood``).

    "Pointwise" is per element of a vector site of the model itself (``ppl.normal(mu, 1.0) @
    "y"`` with vector ``mu`` gives one value per element) and per copy/time step of a site inside
    ``ppl.vmap``/``repeat``/``scan`` (summed over that copy's own elements); a site inside a
    ``cond``/``switch``/``mix`` branch contributes where its branch is taken. Entries of a
    ``ppl.Masked`` observation whose flag is false (missing data) are 0. Every latent choice must
    be in the posterior draws (an :class:`ppl.AddressError` names any that is not).

    ``posterior``: an ``mcmc.run`` result (axes ``(chain, draw)``), a choice map or dict of draws
    with ``batch_ndims`` leading axes (default 1), or a ``ParticleCollection`` (one value per
    particle, weights not applied).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(jnp.full(3, mu), 1.0) @ "y"
        >>> ll = log_likelihood(model, {"mu": jnp.zeros(4)}, observations={"y": jnp.array([0.0, 1.0, 2.0])})
        >>> ll["y"].shape
        (4, 3)
        >>> [round(float(v), 4) for v in ll["y"][0]]
        [-0.9189, -1.4189, -2.9189]
    """
    where = "log_likelihood"
    args = as_args_tuple(args, where)
    observations = as_choicemap(observations, f"{where}: observations")
    if observations.is_empty():
        raise ArgumentError(f"{where}: observations is empty; pass the observed values, e.g. "
                            "observations={'y': ys}")
    if _is_particles(posterior):
        latents = _particle_latents(posterior)
        draws = posterior.traces.get_choices().filter(select(*latents)) if latents else ChoiceMap.empty()
        batch_ndims = 1
    else:
        draws, batch_ndims = _as_draws(posterior, batch_ndims, where)
    obs_paths = [p for p, _ in observations.leaves()]
    draws = draws.filter(~select(*obs_paths))
    _batch_shape(draws, batch_ndims, where)
    return _loglik_staged(draws, observations, model=model, args=args, batch_ndims=batch_ndims)
