"""SMC moves with probabilistic-program proposals and backward kernels (the SMCP3 construction).

:func:`move` moves every particle ``t`` (a trace of the old target ``p_old``) to a trace ``t'`` of
a new target ``p_new`` (the same target, one with more data, or another model) through

1. a **forward kernel**: ``u ~ K(.; t)``, the choices of the generative function
   ``forward(t, *forward_args)``;
2. a **deterministic transform** ``transform(choices_t, u) -> (new_choices, v)``, a bijection
   between ``(t, u)`` and ``(t', v)`` (on the continuous coordinates: a diffeomorphism; discrete
   choices are carried);
3. ``t'`` = ``model.generate(new_choices | observations, *args)``;
4. a **backward kernel** ``L(v; t')``: the generative function ``backward(t', *backward_args)``
   assessed at ``v``.

The incremental log weight is

    log p_new(t') + log L(v; t') - log p_old(t) - log K(u; t) + log |det J|,

where ``J`` is the Jacobian of the transform over the continuous coordinates (computed with
``jax.jacfwd``). Multiplying it into the particle weights keeps the particles properly weighted
for ``p_new`` and ``Z-hat`` an unbiased estimate of its normalizing constant, for *any* forward
and backward kernels (the backward kernel only affects the variance; the best one is the
posterior of ``v`` given ``t'`` of the joint move). The number of choices may change: a split
move proposes an extra coordinate in ``u`` and returns an empty ``v``, its merge counterpart
returns the lost coordinate in ``v``.

Uses: an *extend* step (``model``/``args``/``observations`` with more data and new latents, the
forward kernel a data-driven proposal, possibly also revising old latents), a *change of
target*, and a *rejuvenation* step on the same target (then it is an SMC move whose weights follow
the backward kernel, not an MCMC accept/reject: the particles' weights change).

Conventions (exact):

- ``choices_t`` is the particle's whole choice map, observations included; ``v`` and ``u`` are
  :class:`~ppl.ChoiceMap` objects (or dicts). The transform may return observed addresses: the
  values in ``observations`` replace them.
- **Every choice of** ``t'`` **should be given** by ``new_choices`` or ``observations``. An address
  of ``t'`` that neither gives is an error (detected at trace time), unless
  ``allow_fresh=True``: then it is drawn from the new model's prior and its log density enters
  the weight as ``-log q`` through ``generate``'s weight (the extra draws are part of the forward
  kernel; the weight stays exact). Conditionally present addresses (inside ``ppl.cond`` /
  ``ppl.switch`` branches under ``jit``) given as ``ppl.Masked`` values are checked at run time
  under ``ppl.debug()``; outside debug mode a fresh draw there is weighted exactly in the same way.
- **Jacobian coordinates** are the floating-point values of ``(choices_t, u)`` and of
  ``(new_choices, v)``, leaving out the addresses in ``observations`` (constants) and absent
  ``Masked`` entries. Their numbers must agree (a bijection): a mismatch is a ``ModelError`` at
  trace time when no value is masked, and otherwise makes the particle's weight zero (and is an
  error under ``ppl.debug()``). Observed values that the transform passes through unchanged are
  identity coordinates, so with ``observations=None`` a same-target move may pass the old
  observations through ``choices_t`` (``choices.set(...)``).
- ``backward.assess(v, t', *backward_args)`` must see every choice of the backward kernel in
  ``v`` (``assess`` raises otherwise).

The result has every stored leaf with a particle axis (``particle_axes`` is ``None``).

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from ppl import ChoiceMap
    >>> from inference import smc
    >>> @ppl.gen
    ... def model():
    ...     x = ppl.normal(0.0, 1.0) @ "x"
    ...     ppl.normal(x, 0.5) @ "y"
    >>> @ppl.gen
    ... def jitter(tr):                     # forward: a random offset
    ...     return ppl.normal(0.0, 0.3) @ "e"
    >>> @ppl.gen
    ... def jitter_back(tr):                # backward: the same law for the reverse offset
    ...     return ppl.normal(0.0, 0.3) @ "e"
    >>> def shift(ch, u):                   # (x, e) -> (x + e, -e): a volume-preserving bijection
    ...     return ch.set("x", ch["x"] + u["e"]), ChoiceMap({"e": -u["e"]})
    >>> obs = ChoiceMap({"y": 0.8})
    >>> ps = smc.init(jax.random.key(0), model, (), obs, 2000)
    >>> ps2 = smc.move(jax.random.key(1), ps, jitter, jitter_back, shift, observations=obs)
    >>> bool(abs(ps2.log_marginal_likelihood() - ps.log_marginal_likelihood()) < 0.1)
    True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap, Masked, select
from ppl.core import raise_from_callback
from ppl.errors import AddressError, ArgumentError, ModelError, fmt_addr
from ppl.staging import debug_enabled

from .._jacobian import flatten, is_continuous, masked_logabsdet, presence, raw, unflatten
from ._util import as_choicemap, staged
from .particles import ParticleCollection

__all__ = ["move"]


# ------------------------------------------------------------------------------ helpers
def _is_masked(x) -> bool:
    return isinstance(x, Masked)


def _as_output_map(x, what: str) -> ChoiceMap:
    if isinstance(x, ChoiceMap):
        return x
    if x is None:
        return ChoiceMap.empty()
    if isinstance(x, dict):
        return ChoiceMap(x)
    raise ArgumentError(
        f"smc.move: the transform must return (new_choices, v), two ChoiceMaps (or dicts); its {what} "
        f"is a {type(x).__name__}. Return ChoiceMap.empty() (or {{}}) for an empty v."
    )


def _coords(maps, obs_paths):
    """Per leaf (``is_leaf=Masked``) of the tuple of choice maps ``maps``: ``(path, coord, leaf)``
    with ``coord`` whether it is a Jacobian coordinate (floating-point and not observed)."""
    return [(path, is_continuous(v) and path not in obs_paths, v) for chm in maps for path, v in chm.leaves()]


def _vector(infos):
    return flatten([raw(v) for _, c, v in infos if c])


def _active(infos):
    return flatten([presence(v) for _, c, v in infos if c], bool)


def _rebuild(maps, x, infos):
    """``maps`` with their Jacobian-coordinate values replaced from the flat vector ``x``."""
    leaves, treedef = jax.tree_util.tree_flatten(maps, is_leaf=_is_masked)
    coords = [c for _, c, _ in infos]
    new = iter(unflatten(x, [raw(leaf) for leaf, c in zip(leaves, coords, strict=True) if c]))
    out = []
    for leaf, coord in zip(leaves, coords):
        if coord:
            val = next(new)
            leaf = Masked(val, leaf.flag) if _is_masked(leaf) else val
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def _names(infos, limit=6):
    paths = []
    for p, c, _ in infos:
        if c and p not in paths:
            paths.append(p)
    shown = ", ".join(fmt_addr(p) for p in paths[:limit])
    return shown + (", ..." if len(paths) > limit else "") if paths else "none"


def _debug_callback(dims_ok, k_in, k_out, fresh_bad, fresh_paths):
    """One host check after the particle map (debug mode): dimension counts and fresh draws."""
    fresh_bad = np.asarray(fresh_bad)
    if fresh_bad.size and fresh_bad.any():
        j = int(np.argmax(fresh_bad.reshape(-1, len(fresh_paths)).any(axis=0)))
        raise_from_callback(ModelError(
            f"smc.move: the new trace's choice at {fresh_paths[j]} was drawn from the prior because new_choices "
            "leave it out (masked) where the new trace has it (debug-mode run-time check); return a value for "
            "it from the transform, or pass allow_fresh=True to draw it from the prior."))
    dims_ok, k_in, k_out = np.asarray(dims_ok), np.asarray(k_in), np.asarray(k_out)
    if not dims_ok.all():
        i = int(np.argmin(dims_ok))
        raise_from_callback(ModelError(
            f"smc.move: for particle {i} the transform maps {int(k_in[i])} present continuous coordinates of "
            f"(choices, u) to {int(k_out[i])} of (new_choices, v) (debug-mode run-time check); a move must be a "
            "bijection: return the coordinates a move removes in v, and propose the ones it creates in u."))


def _check_fresh(new_tr, constraints, allow_fresh: bool, model):
    """Static check that every choice of ``t'`` is constrained; returns the masked addresses to check
    at run time (debug mode) and, per address, whether it was drawn fresh."""
    if allow_fresh:
        return [], jnp.zeros((0,), bool)
    given = dict(constraints.leaves())
    paths, bad = [], []
    for path, v in new_tr.choices.leaves():
        c = given.get(path)
        if c is None:
            raise AddressError(
                f"smc.move: the new trace of {model.name} has a choice at {fmt_addr(path)} that neither the "
                "transform's new_choices nor the observations give, so it would be drawn from the prior. Return "
                "it from the transform (for a same-target move: start from the old choices, e.g. "
                "choices.set(...)), add it to observations, or pass allow_fresh=True to draw it from the new "
                "model's prior (its density then enters the weight as -log q through generate's weight).")
        if _is_masked(c):
            paths.append(fmt_addr(path))
            bad.append(jnp.any(jnp.logical_and(presence(v), jnp.logical_not(presence(c)))))
    return paths, (jnp.stack(bad) if bad else jnp.zeros((0,), bool))


# ------------------------------------------------------------------------------ the move
def _move_impl(key, ps, forward, backward, transform, model, args, args_given, observations, forward_args,
               backward_args, allow_fresh):
    obs = as_choicemap(observations)
    obs_paths = {p for p, _ in obs.leaves()}
    drop_obs = ~select(*obs_paths) if obs_paths else None
    n = ps.n_particles

    def one(k, tr):
        kf, kg = jax.random.split(k)
        fwd = forward.simulate(kf, tr, *forward_args)
        old, u = tr.choices, fwd.choices
        infos_in = _coords((old, u), obs_paths)
        x0 = _vector(infos_in)

        def f(x):
            ins = _rebuild((old, u), x, infos_in)
            out = transform(*ins)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ArgumentError(
                    "smc.move: the transform must return a pair (new_choices, v) of ChoiceMaps, got "
                    f"{type(out).__name__}.")
            outs = (_as_output_map(out[0], "first output (new_choices)"), _as_output_map(out[1], "second output (v)"))
            infos_out = _coords(outs, obs_paths)
            return _vector(infos_out), (outs, infos_out)

        # the primal pass gives the outputs and their presence flags; jacfwd the coordinates
        y0, (outs, infos_out) = f(x0)
        n_in, n_out = x0.shape[0], y0.shape[0]
        masked = any(_is_masked(v) for *_, v in infos_in + infos_out)
        if not masked and n_in != n_out:
            raise ModelError(
                f"smc.move: the transform maps {n_in} continuous coordinates of (choices, u) (at "
                f"{_names(infos_in)}) to {n_out} of (new_choices, v) (at {_names(infos_out)}); a move must be a "
                "bijection: propose the coordinates a move creates in u (forward kernel) and return the ones it "
                "removes in v (assessed by the backward kernel). Observed addresses are left out when they are "
                "in `observations`.")
        if n_in or n_out:
            J = jax.jacfwd(lambda x: f(x)[0])(x0) if n_in else jnp.zeros((n_out, 0), jnp.float32)
        else:
            J = jnp.zeros((0, 0), jnp.float32)
        act_in, act_out = _active(infos_in), _active(infos_out)
        if masked:   # log|det| of the present block (-inf when the present counts differ)
            logdet, dims_ok = masked_logabsdet(J, act_in, act_out), jnp.sum(act_in) == jnp.sum(act_out)
        else:        # square (checked above): the plain determinant
            logdet, dims_ok = masked_logabsdet(J), jnp.array(True)
        new_choices, v = outs
        if drop_obs is not None:
            new_choices = new_choices.filter(drop_obs)
        constraints = new_choices | obs
        gf = tr.gf if model is None else model
        a = tuple(args) if args_given else tr.args
        new_tr, gw = gf.generate(kg, constraints, *a)
        fresh_paths, fresh_bad = _check_fresh(new_tr, constraints, allow_fresh, gf)
        paths_box[:] = fresh_paths
        log_l, _ = backward.assess(v, new_tr, *backward_args)
        w = gw + log_l - tr.score - fwd.score + logdet
        w = jnp.where(dims_ok, w, -jnp.inf)
        w = jnp.where(jnp.isnan(w), -jnp.inf, w)
        return new_tr, jnp.asarray(w, jnp.float32), (dims_ok, jnp.sum(act_in), jnp.sum(act_out), fresh_bad)

    keys = jax.random.split(key, n)
    paths_box: list = []
    traces, w, checks = jax.vmap(one)(keys, ps.traces)
    if debug_enabled():
        jax.debug.callback(functools.partial(_debug_callback, fresh_paths=tuple(paths_box)), *checks)
    return ParticleCollection(traces, ps.log_weights + w, ps.log_z, ps.dead)


_move_s = staged(("forward", "backward", "transform", "model", "args_given", "allow_fresh"),
                 ("args", "forward_args", "backward_args"))(
    lambda key, ps, forward, backward, transform, model, args, args_given, observations, forward_args,
    backward_args, allow_fresh: _move_impl(key, ps, forward, backward, transform, model, args, args_given,
                                           observations, forward_args, backward_args, allow_fresh))


def move(key, ps: ParticleCollection, forward, backward, transform, model=None, args=None, observations=None,
         forward_args=(), backward_args=(), allow_fresh: bool = False):
    """Move every particle with an SMCP3 move and reweight (see the module docstring).

    For each particle ``t``: ``u ~ forward(t, *forward_args)``; ``(new_choices, v) =
    transform(t.choices, u)``; ``t' = model.generate(new_choices | observations, *args)``; the
    log weight gains ``log p_new(t') + log L(v; t') - log p_old(t) - log K(u; t) + log|det J|``
    with ``L`` the backward generative function ``backward(t', *backward_args)`` assessed at
    ``v``. ``log Z-hat`` (``ps.log_marginal_likelihood()``) then estimates the new target's
    evidence, unbiased in ``Z``.

    Args:
        key: a PRNG key (same key, same result bit for bit).
        ps: a :class:`ParticleCollection` (its traces' model given its observations is ``p_old``).
        forward: generative function called as ``forward.simulate(key, trace, *forward_args)``.
        backward: generative function assessed as ``backward.assess(v, new_trace, *backward_args)``.
        transform: ``transform(choices, u) -> (new_choices, v)``, a deterministic bijection written in
            JAX (it is differentiated with ``jax.jacfwd``); ``choices``, ``u``, ``new_choices`` and
            ``v`` are choice maps.
        model: the new target's generative function (default: the particles' own model).
        args: the new target's arguments (default: the particles' own arguments).
        observations: the new target's observed choices (a ChoiceMap); they override the transform's
            values at those addresses and are left out of the Jacobian.
        forward_args, backward_args: extra arguments of the kernels.
        allow_fresh: draw choices of ``t'`` that nothing gives from the new model's prior (weighted
            exactly by ``generate``'s weight) instead of raising.

    Examples:
        >>> import jax, ppl
        >>> from ppl import ChoiceMap
        >>> from inference import smc
        >>> @ppl.gen
        ... def one():                                   # one latent
        ...     return ppl.normal(0.0, 1.0) @ "a"
        >>> @ppl.gen
        ... def two():                                   # two latents
        ...     ppl.normal(0.0, 1.0) @ "a"
        ...     ppl.normal(0.0, 1.0) @ "b"
        >>> @ppl.gen
        ... def birth(tr):
        ...     return ppl.normal(0.0, 1.0) @ "b"
        >>> @ppl.gen
        ... def nothing(tr):
        ...     return None
        >>> ps = smc.init(jax.random.key(0), one, (), None, 100)
        >>> ps = smc.move(jax.random.key(1), ps, birth, nothing, lambda ch, u: (ch | u, ChoiceMap.empty()),
        ...               model=two, args=())
        >>> sorted(a for a, _ in ps.traces.choices), float(abs(ps.log_marginal_likelihood())) < 1e-5
        (['a', 'b'], True)
    """
    from ppl.core import GenerativeFunction, as_args_tuple

    for name, gf in (("forward", forward), ("backward", backward)):
        if not isinstance(gf, GenerativeFunction):
            raise ArgumentError(f"smc.move: {name} must be a generative function (a @ppl.gen function taking "
                                f"the trace first), got {type(gf).__name__}.")
    if model is not None and not isinstance(model, GenerativeFunction):
        raise ArgumentError(f"smc.move: model must be a generative function or None, got {type(model).__name__}.")
    if not callable(transform):
        raise ArgumentError(f"smc.move: transform must be a function (choices, u) -> (new_choices, v), got "
                            f"{type(transform).__name__}.")
    if not isinstance(ps, ParticleCollection):
        raise ArgumentError(f"smc.move: ps must be a ParticleCollection, got {type(ps).__name__}.")
    args_given = args is not None
    return _move_s(key, ps=ps, forward=forward, backward=backward, transform=transform, model=model,
                   args=as_args_tuple(args, "smc.move") if args_given else (), args_given=args_given,
                   observations=as_choicemap(observations),
                   forward_args=as_args_tuple(forward_args, "smc.move", "forward_args"),
                   backward_args=as_args_tuple(backward_args, "smc.move", "backward_args"),
                   allow_fresh=bool(allow_fresh))
