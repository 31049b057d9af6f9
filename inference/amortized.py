"""Amortized proposals: a neural ``q(latents | observations)`` trained on simulations from the model.

The model itself is the training set: :func:`simulate_pairs` draws ``(latents, observations)``
pairs from the joint distribution ``p(z, x)`` (vectorized, compiled), and :func:`train` fits a
proposal by the *forward* KL divergence (the sleep phase of wake-sleep): it maximizes
``E_{(z, x) ~ p}[log q(z | x)]`` with optax through :func:`inference.vi.fit` (chunked, with
progress, history and checkpoints). Forward KL is mass-covering, which is what a proposal for
importance sampling needs: once trained, one network call per data set gives a proposal for any
new data set of the same form, with no per-data-set optimization.

:func:`deep_sets_proposal` builds such a proposal for models whose observations are a *set* of
exchangeable elements (groups, data points): a per-element network, mean pooling, and heads that
output a normal (real latents) or log-normal (positive latents) distribution for every latent.
Latents that belong to one element (a group's own parameter) are sampled given that element's
embedding, the pooled embedding and the sampled global latents. ``q.proposal`` is a ``@ppl.gen``
function called as ``q.proposal(params, observations)``; pass it to
``importance.sample(..., proposal=q.proposal, proposal_args=(params, observations))`` or to
``smc.init``; ``q.extend_proposal(trace, params, observations)`` proposes only the elements' latents
that ``trace`` lacks, given the global latents in ``trace`` (for ``smc.extend`` when a new group
arrives).

Examples:
    >>> import jax, jax.numpy as jnp, optax, ppl
    >>> from inference import amortized, importance
    >>> @ppl.gen
    ... def model():
    ...     mu = ppl.normal(0.0, 3.0) @ "mu"
    ...     return ppl.normal(jnp.full(6, mu), 1.0) @ "y"
    >>> q = amortized.deep_sets_proposal(lambda obs: obs["y"][:, None], {"mu": "real"}, hidden=8)
    >>> params = q.init_params(jax.random.key(0), model, (), ["y"], n_calibrate=256)
    >>> res = amortized.train(jax.random.key(1), model, (), ["y"], q, params, optax.adam(3e-3), 300,
    ...                       batch_size=64, progress=False)
    >>> obs = ppl.ChoiceMap({"y": jnp.array([2.1, 1.4, 3.0, 2.2, 1.9, 2.5])})
    >>> ps = importance.sample(jax.random.key(2), model, (), obs, 1000, proposal=q.proposal,
    ...                        proposal_args=(res.params, obs))
    >>> prior = importance.sample(jax.random.key(2), model, (), obs, 1000)
    >>> bool(ps.ess() > 3 * prior.ess())
    True
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from ppl import keys as pkeys
from ppl.choicemap import ChoiceMap, Selection, normalize_addr
from ppl.core import as_args_tuple, pack_args, unpack_args
from ppl.errors import ModelError
from ppl.lru import LRUCache

from . import vi
from ._fnkey import split_fn

__all__ = ["simulate_pairs", "sleep_objective", "train", "deep_sets_proposal", "NeuralProposal"]

_SUPPORTS = ("real", "positive")


# ------------------------------------------------------------------------------ training pairs
def _addresses(observed, fn: str) -> tuple:
    """Observed addresses as a hashable tuple of address paths (from a list, a ChoiceMap or one address)."""
    if isinstance(observed, ChoiceMap):
        paths = tuple(path for path, _ in observed.leaves())
    elif isinstance(observed, str):
        paths = (normalize_addr(observed),)
    elif isinstance(observed, (list, tuple)):
        paths = tuple(normalize_addr(a) for a in observed)
    elif isinstance(observed, Selection):
        raise ModelError(f"{fn}: observed_addresses must list the observed addresses (a list of strings or "
                         "a ChoiceMap of observations), not a Selection: the proposal needs to know them exactly")
    else:
        raise ModelError(f"{fn}: observed_addresses must be a list of addresses or a ChoiceMap, got "
                         f"{type(observed).__name__}")
    if not paths:
        raise ModelError(f"{fn}: observed_addresses is empty; name the model's observed addresses (e.g. ['y'])")
    return paths


def _split_pairs(choices: ChoiceMap, paths: tuple, fn: str):
    present = {path for path, _ in choices.leaves()}
    for path in paths:
        if not any(p[:len(path)] == path for p in present):
            raise ModelError(f"{fn}: observed address {'/'.join(path)!r} is not a choice of the model; its choices "
                             f"are {sorted('/'.join(p) for p in present)}")
    sel = ppl.select(*paths)
    return choices.filter(~sel), choices.filter(sel)


@functools.partial(jax.jit, static_argnames=("model", "paths", "n"))
def _simulate_pairs_jit(key, model, packed_args, paths, n):
    args = unpack_args(packed_args)
    trs = jax.vmap(lambda k: model.simulate(k, *args), in_axes=(pkeys.LANE_AXES,))(pkeys.lanes(key, n))
    return _split_pairs(trs.choices, paths, "amortized.simulate_pairs")


def simulate_pairs(key, model, args, observed_addresses, n: int):
    """``n`` draws ``(latents, observations)`` from the joint distribution of ``model(*args)``.

    ``observed_addresses`` lists the addresses that are observed (strings or address tuples, or a
    ChoiceMap whose addresses are used); every other choice is a latent. Returns two ChoiceMaps
    whose leaves have a leading axis of size ``n``. Vectorized over ``n`` and compiled once per
    model, address list, ``n`` and argument structure.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model(k):
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(jnp.full(k, mu), 1.0) @ "y"
        >>> z, x = simulate_pairs(jax.random.key(0), model, (3,), ["y"], 100)
        >>> z["mu"].shape, x["y"].shape
        ((100,), (100, 3))
    """
    n = int(n)
    if n <= 0:
        raise ModelError(f"amortized.simulate_pairs: n must be a positive integer, got {n}")
    args = as_args_tuple(args, "amortized.simulate_pairs")
    return _simulate_pairs_jit(key, model, pack_args(args), _addresses(observed_addresses,
                                                                         "amortized.simulate_pairs"), n)


# ------------------------------------------------------------------------------ forward-KL training
def sleep_objective(model, observed_addresses, proposal, batch_size: int) -> vi.Expectation:
    """The forward-KL (sleep) objective ``E_{(z, x) ~ p}[log q(z | x)]`` as a ``vi.expectation``.

    Called as ``objective(key, params, model_args)``: draws ``batch_size`` pairs from
    ``model(*model_args)`` and returns the mean of ``log q(z | x)`` under ``proposal(params, x)``
    (a ``@ppl.gen`` function taking its parameters and the observations ChoiceMap). The draws do not
    depend on ``params``, so the gradient is the plain gradient of the mean log density.
    ``-objective`` is the forward KL ``KL(p(z | x) || q(z | x))`` averaged over ``x ~ p(x)``, up to the
    constant posterior entropy. Use it with :func:`inference.vi.fit` (that is what :func:`train` does).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(mu, 1.0) @ "y"
        >>> @ppl.gen
        ... def q(params, obs):
        ...     return ppl.normal(params["a"] * obs["y"], 0.7071) @ "mu"      # exact posterior at a = 1/2
        >>> obj = sleep_objective(model, ["y"], q, 4096)
        >>> g = obj.grad_estimate(jax.random.key(0), {"a": jnp.array(0.5)}, ())
        >>> bool(abs(g["a"]) < 0.1)
        True
    """
    paths = _addresses(observed_addresses, "amortized.sleep_objective")
    batch_size = int(batch_size)
    if batch_size <= 0:
        raise ModelError(f"amortized.sleep_objective: batch_size must be a positive integer, got {batch_size}")
    gf = proposal.proposal if isinstance(proposal, NeuralProposal) else proposal

    @vi.expectation
    def sleep_forward_kl(key, params, model_args):
        with vi.detached():
            trs = jax.vmap(lambda k: model.simulate(k, *model_args), in_axes=(pkeys.LANE_AXES,))(
                pkeys.lanes(key, batch_size))
            z, x = _split_pairs(jax.lax.stop_gradient(trs.choices), paths, "amortized.sleep_objective")
        log_q = jax.vmap(lambda zi, xi: gf.assess(zi, params, xi)[0])(z, x)
        return jnp.mean(log_q)

    return sleep_forward_kl


def train(key, model, args, observed_addresses, proposal, params, optimizer, n_steps: int, batch_size: int = 128,
          **fit_options) -> vi.FitResult:
    """Train ``proposal`` by forward KL on fresh simulations from ``model(*args)`` at every step.

    ``proposal`` is a :class:`NeuralProposal` or any ``@ppl.gen`` function called as
    ``proposal(params, observations)`` that samples the latent addresses. Each of the ``n_steps``
    optax steps draws ``batch_size`` new ``(z, x)`` pairs (no data set is stored, so there is no
    overfitting) and ascends ``mean log q(z | x)``. ``fit_options`` go to :func:`inference.vi.fit`
    (``progress``, ``chunk_size``, ``checkpoint_dir``, ``opt_state``). Returns its
    :class:`~inference.vi.FitResult`: ``params``, ``opt_state``, ``losses`` (the mean
    ``-log q(z | x)`` per step). Same key, same result.

    Before training, one simulated pair is checked against the proposal: an observed address the
    proposal samples, or a latent the proposal does not produce, raises a ``ppl.ModelError``
    naming it (latents the proposal leaves out would be drawn from the prior by importance sampling).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, ppl
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(mu, 1.0) @ "y"
        >>> @ppl.gen
        ... def q(params, obs):
        ...     return ppl.normal(params["a"] * obs["y"], jnp.exp(params["log_s"])) @ "mu"
        >>> p0 = {"a": jnp.array(0.0), "log_s": jnp.array(0.0)}
        >>> res = train(jax.random.key(0), model, (), ["y"], q, p0, optax.adam(0.05), 300, 256, progress=False)
        >>> round(float(res.params["a"]), 1), round(float(jnp.exp(res.params["log_s"])), 1)   # exact: 0.5, 0.7
        (0.5, 0.7)
    """
    args = as_args_tuple(args, "amortized.train")
    paths = _addresses(observed_addresses, "amortized.train")
    gf = proposal.proposal if isinstance(proposal, NeuralProposal) else proposal
    _check_proposal(key, model, args, paths, gf, params)
    objective = sleep_objective(model, paths, gf, batch_size)
    return vi.fit(key, objective, params, optimizer, n_steps, args, **fit_options)


def _check_proposal(key, model, args, paths, gf, params):
    z, x = simulate_pairs(key, model, args, paths, 1)
    z, x = jax.tree_util.tree_map(lambda a: a[0], (z, x))
    choices = jax.eval_shape(lambda k: gf.simulate(k, params, x).choices, key)
    proposed = {path for path, _ in choices.leaves()}
    latent = {path for path, _ in z.leaves()}
    for path in sorted(proposed):
        if any(path[:len(o)] == o for o in paths):
            raise ModelError(f"amortized.train: the proposal samples {'/'.join(path)!r}, which is observed; a "
                             "proposal must sample only latent addresses")
        if path not in latent:
            raise ModelError(f"amortized.train: the proposal samples {'/'.join(path)!r}, which is not a latent "
                             f"choice of the model (latents: {sorted('/'.join(p) for p in latent)})")
    missing = sorted('/'.join(p) for p in latent - proposed)
    if missing:
        raise ModelError(f"amortized.train: the proposal does not sample the latent(s) {missing}; add them to the "
                         "proposal (forward-KL training needs q to cover every latent)")


# ------------------------------------------------------------------------------ deep-sets proposals
def _init_mlp(key, sizes):
    layers = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        layers.append({"w": jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a), "b": jnp.zeros((b,), jnp.float32)})
    return layers


def _mlp(layers, x, final_act=False):
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if i < len(layers) - 1 or final_act:
            x = jax.nn.gelu(x)
    return x


def _unconstrain(v, support):
    return jnp.log(v) if support == "positive" else v


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralProposal:
    """A deep-sets proposal built by :func:`deep_sets_proposal` (see there).

    ``proposal``: ``@ppl.gen`` ``(params, observations)`` sampling every latent;
    ``extend_proposal``: ``@ppl.gen`` ``(trace, params, observations)`` sampling the per-element latents
    that ``trace`` lacks, given the global latents of ``trace``; :meth:`init_params`; :meth:`encode`.
    """

    features: Callable
    global_latents: tuple
    local_latents: tuple
    hidden: int
    proposal: Any = dataclasses.field(repr=False, default=None)
    extend_proposal: Any = dataclasses.field(repr=False, default=None)

    def init_params(self, key, model, args, observed_addresses, n_calibrate: int = 512):
        """Random network weights plus input/output standardization from ``n_calibrate`` simulations.

        The feature and latent means and scales (in unconstrained space) are estimated from
        simulated pairs and stored in ``params["norm"]``; the network reads them through
        ``stop_gradient``, so training leaves them fixed.

        Examples:
            >>> import jax, jax.numpy as jnp, ppl
            >>> @ppl.gen
            ... def model():
            ...     s = ppl.gamma(2.0, 2.0) @ "s"
            ...     return ppl.normal(jnp.zeros(5), s) @ "y"
            >>> q = deep_sets_proposal(lambda obs: obs["y"][:, None], {"s": "positive"}, hidden=4)
            >>> params = q.init_params(jax.random.key(0), model, (), ["y"], n_calibrate=64)
            >>> sorted(params["norm"]), params["phi"][0]["w"].shape
            (['f_mean', 'f_std', 'g_mean', 'g_std', 'l_mean', 'l_std'], (1, 4))
            >>> h, pooled = q.encode(params, ppl.ChoiceMap({"y": jnp.ones(5)}))
            >>> h.shape, pooled.shape
            ((5, 4), (4,))
        """
        paths = _addresses(observed_addresses, "NeuralProposal.init_params")
        z, x = simulate_pairs(key, model, args, paths, n_calibrate)
        feats = jax.vmap(self._features)(x)
        latent = {p for p, _ in z.leaves()}
        for addr, support in self.global_latents:
            if normalize_addr(addr) not in latent:
                raise ModelError(f"deep_sets_proposal: global latent {addr!r} is not a latent choice of the model "
                                 f"(latents: {sorted('/'.join(p) for p in latent)})")
        self._check_locals(z, latent, feats.shape[1])
        fdims = tuple(range(feats.ndim - 1))
        g_vals = [_unconstrain(z[a], s) for a, s in self.global_latents]
        l_vals = [_unconstrain(self._local_values(z, a, feats.shape[1]), s) for a, s in self.local_latents]

        def stats(vals):
            if not vals:
                return jnp.zeros((0,), jnp.float32), jnp.ones((0,), jnp.float32)
            v = jnp.stack(vals, -1)
            axes = tuple(range(v.ndim - 1))
            return v.mean(axes), v.std(axes) + 1e-3

        norm = {"f_mean": feats.mean(fdims), "f_std": feats.std(fdims) + 1e-3}
        norm["g_mean"], norm["g_std"] = stats(g_vals)
        norm["l_mean"], norm["l_std"] = stats(l_vals)
        d, h, G, L = feats.shape[-1], self.hidden, len(self.global_latents), len(self.local_latents)
        ks = jax.random.split(jax.random.fold_in(key, 1), 4)
        params = {"norm": norm}
        if feats.ndim == 4:      # (batch, elements, items, dims): items of an element are a set too
            params["inner"] = _init_mlp(ks[0], [d, h, h])
            d = h
        params["phi"] = _init_mlp(ks[1], [d, h, h])
        params["rho"] = _init_mlp(ks[2], [h, h, h])
        params["g_head"] = _init_mlp(jax.random.fold_in(ks[2], 1), [h, 2 * G]) if G else []
        params["l_head"] = _init_mlp(ks[3], [2 * h + G, h, 2 * L]) if L else []
        return params

    def _features(self, observations):
        f = jnp.asarray(self.features(observations), jnp.float32)
        if f.ndim not in (2, 3):
            raise ModelError("deep_sets_proposal: features(observations) must return an array of shape "
                             f"(elements, dims) or (elements, items, dims), got shape {f.shape}")
        return f

    def _check_locals(self, z, latent, m):
        for addr, support in self.local_latents:
            if "{}" in addr:
                missing = [addr.format(j) for j in range(m) if normalize_addr(addr.format(j)) not in latent]
                if missing:
                    raise ModelError(f"deep_sets_proposal: local latent {addr!r} needs one address per element "
                                     f"({m} elements) but {missing} are not latent choices of the model")
            else:
                if normalize_addr(addr) not in latent:
                    raise ModelError(f"deep_sets_proposal: local latent {addr!r} is not a latent choice of the model "
                                     f"(latents: {sorted('/'.join(p) for p in latent)})")
                if z[addr].shape[1:] != (m,):
                    raise ModelError(f"deep_sets_proposal: local latent {addr!r} has shape {z[addr].shape[1:]}, but "
                                     f"features(observations) has {m} elements: a local latent is a vector with "
                                     "one entry per element (or a per-element address such as 'theta{}')")

    @staticmethod
    def _local_values(z, addr, m):
        if "{}" in addr:
            return jnp.stack([z[addr.format(j)] for j in range(m)], -1)
        return z[addr]

    def encode(self, params, observations):
        """Per-element embeddings ``(m, hidden)`` and the pooled embedding ``(hidden,)``.

        Example: see :meth:`init_params`."""
        norm = jax.lax.stop_gradient(params["norm"])
        f = (self._features(observations) - norm["f_mean"]) / norm["f_std"]
        if f.ndim == 3:
            f = jnp.mean(_mlp(params["inner"], f, final_act=True), axis=1)
        h = _mlp(params["phi"], f, final_act=True)
        pooled = _mlp(params["rho"], jnp.mean(h, axis=0), final_act=True)
        return h, pooled

    def _global_dists(self, params, pooled):
        norm = jax.lax.stop_gradient(params["norm"])
        out = _mlp(params["g_head"], pooled)
        G = len(self.global_latents)
        loc = norm["g_mean"] + norm["g_std"] * out[:G]
        scale = norm["g_std"] * (jax.nn.softplus(out[G:] + 0.5) + 1e-3)
        return loc, scale

    def _local_dists(self, params, h, pooled, g_unc):
        norm = jax.lax.stop_gradient(params["norm"])
        g_in = (g_unc - norm["g_mean"]) / norm["g_std"]
        # first layer on [h_j, pooled, globals], split so that the data-only part is computed once
        # (not once per particle when the sampled globals are batched over particles)
        first, rest = params["l_head"][0], params["l_head"][1:]
        hd = h.shape[1]
        w = first["w"]
        data_part = h @ w[:hd] + pooled @ w[hd:2 * hd] + first["b"]
        pre = data_part + (g_in @ w[2 * hd:] if g_in.shape[0] else 0.0)
        out = _mlp(rest, jax.nn.gelu(pre))
        L = len(self.local_latents)
        loc = norm["l_mean"] + norm["l_std"] * out[:, :L]
        scale = norm["l_std"] * (jax.nn.softplus(out[:, L:] + 0.5) + 1e-3)
        return loc, scale


def _site(support, loc, scale):
    return ppl.log_normal(loc, scale) if support == "positive" else ppl.normal(loc, scale)


def deep_sets_proposal(features: Callable, global_latents: dict | None = None, local_latents: dict | None = None,
                       hidden: int = 32) -> NeuralProposal:
    """A neural proposal over a set of exchangeable observation elements (deep sets).

    - ``features(observations) -> array``: the observations ChoiceMap as a set of ``m`` elements,
      shape ``(m, d)``, or ``(m, k, d)`` when each element is itself a set of ``k`` items (e.g. the
      observations of one group): items are encoded and mean-pooled per element first.
    - ``global_latents``: ``{address: support}`` for scalar latents of the whole data set;
      ``support`` is ``"real"`` (normal proposal) or ``"positive"`` (log-normal proposal).
    - ``local_latents``: ``{address: support}`` for latents with one value per element: either a
      vector site of shape ``(m,)`` or a per-element address pattern with ``{}`` (``"theta{}"`` for
      ``theta0, theta1, ...``), which :attr:`NeuralProposal.extend_proposal` can extend element by
      element in SMC.

    Network: per-element MLP ``phi`` (two layers of width ``hidden``), mean pooling, MLP ``rho``;
    the global head maps the pooled embedding to loc/scale of each global latent (in unconstrained
    space: ``log`` of positive latents); the local head maps ``[h_j, pooled, sampled globals]`` to
    loc/scale of element ``j``'s latents, so ``q(z_j | globals, x)`` can follow the posterior's
    conditional structure. Inputs and outputs are standardized with statistics estimated from
    simulations in :meth:`NeuralProposal.init_params`.

    Building a proposal again with equal arguments (``features`` with the same code and Python
    constants, e.g. the same ``lambda`` written anew, and no closed-over arrays) returns the same
    object, so programs compiled for it (by :func:`train`, importance sampling) are reused rather
    than compiled again.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 5.0) @ "mu"
        ...     theta = ppl.normal(jnp.full(3, mu), 1.0) @ "theta"
        ...     return ppl.normal(jnp.broadcast_to(theta[:, None], (3, 4)), 0.5) @ "y"
        >>> q = deep_sets_proposal(lambda obs: obs["y"][..., None], {"mu": "real"}, {"theta": "real"}, hidden=8)
        >>> params = q.init_params(jax.random.key(0), model, (), ["y"])
        >>> obs = ppl.ChoiceMap({"y": jnp.ones((3, 4))})
        >>> tr = q.proposal.simulate(jax.random.key(1), params, obs)
        >>> tr.choices["mu"].shape, tr.choices["theta"].shape
        ((), (3,))
        >>> build = lambda: deep_sets_proposal(lambda obs: obs["y"][..., None], {"mu": "real"}, hidden=8)
        >>> build() is build()   # the same lambda code written anew: the same proposal
        True
    """
    global_latents = dict(global_latents or {})
    local_latents = dict(local_latents or {})
    if not global_latents and not local_latents:
        raise ModelError("deep_sets_proposal: give at least one latent in global_latents or local_latents")
    for kind, spec in (("global_latents", global_latents), ("local_latents", local_latents)):
        for addr, support in spec.items():
            if support not in _SUPPORTS:
                raise ModelError(f"deep_sets_proposal: {kind}[{addr!r}] has support {support!r}; use one of "
                                 f"{_SUPPORTS} ('positive' latents get a log-normal proposal)")
            if kind == "global_latents" and "{}" in addr:
                raise ModelError(f"deep_sets_proposal: global latent {addr!r} has a '{{}}' element pattern; "
                                 "per-element latents go in local_latents")
    spec, lifted = split_fn(features)
    cache_key = None
    if not lifted and spec.key[0] == "fn":  # features keyed on its code and constants (no arrays)
        cache_key = (spec, tuple(global_latents.items()), tuple(local_latents.items()), int(hidden))
        try:
            known = _PROPOSALS.get(cache_key)
        except TypeError:  # an unhashable address
            known = cache_key = None
        if known is not None:
            return known
    q = _build_proposal(features, global_latents, local_latents, hidden)
    if cache_key is not None:
        _PROPOSALS[cache_key] = q
    return q


#: proposals built by deep_sets_proposal, by their arguments' compile keys: building one again the
#: same way returns the same object, so its generative functions (and the programs compiled for
#: them, e.g. by train) are reused
_PROPOSALS = LRUCache(64)


def _build_proposal(features, global_latents, local_latents, hidden):
    q = NeuralProposal(features, tuple(global_latents.items()), tuple(local_latents.items()), int(hidden))

    def sample_globals(params, pooled):
        if not q.global_latents:
            return jnp.zeros((0,), jnp.float32)
        loc, scale = q._global_dists(params, pooled)
        g = []
        for i, (addr, support) in enumerate(q.global_latents):
            v = _site(support, loc[i], scale[i]) @ addr
            g.append(_unconstrain(v, support))
        return jnp.stack(g)

    def sample_locals(params, h, pooled, g_unc, elements):
        if not q.local_latents:
            return
        loc, scale = q._local_dists(params, h, pooled, g_unc)
        for i, (addr, support) in enumerate(q.local_latents):
            if "{}" in addr:
                for j in elements:
                    _site(support, loc[j, i], scale[j, i]) @ addr.format(j)
            else:
                _site(support, loc[:, i], scale[:, i]) @ addr

    @ppl.gen
    def amortized_proposal(params, observations):
        h, pooled = q.encode(params, observations)
        g_unc = sample_globals(params, pooled)
        sample_locals(params, h, pooled, g_unc, range(h.shape[0]))

    @ppl.gen
    def amortized_extend_proposal(trace, params, observations):
        h, pooled = q.encode(params, observations)
        choices = trace.choices
        g = [_unconstrain(choices[a], s) for a, s in q.global_latents]
        g_unc = jnp.stack(g) if g else jnp.zeros((0,), jnp.float32)
        for addr, _ in q.local_latents:
            if "{}" not in addr:
                raise ModelError(f"NeuralProposal.extend_proposal: local latent {addr!r} is one vector site, which "
                                 "update cannot grow element by element; write the model with per-element "
                                 "addresses (e.g. f'theta{j}') and give the pattern 'theta{}'")
        m = h.shape[0]
        new = [j for j in range(m) if all(a.format(j) not in choices for a, _ in q.local_latents)]
        sample_locals(params, h, pooled, g_unc, new)

    object.__setattr__(q, "proposal", amortized_proposal)
    object.__setattr__(q, "extend_proposal", amortized_extend_proposal)
    return q
