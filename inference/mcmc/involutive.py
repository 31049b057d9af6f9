"""Involutive MCMC: a proposal of auxiliary choices and a deterministic involution.

``mcmc.involutive(proposal, involution, proposal_args)`` is Gen's involutive MCMC (the
"trace translator" formulation of reversible jump) in this library's API:

1. ``aux = proposal.simulate(key, trace, *proposal_args).choices``: auxiliary choices ``u``
   drawn given the current trace ``t``;
2. ``constraints, new_aux = involution(choices, aux, *proposal_args)``: a deterministic JAX
   function of the old trace's choices and ``u``; ``constraints`` are new values at model
   addresses (they may change a ``ppl.cond``/``ppl.switch`` index together with the new branch's
   choices, so the number of choices may change) and ``new_aux`` are the auxiliary choices ``u'``
   of the reverse move;
3. ``t', w, discard = model.update(key, t, constraints)``;
4. accept with ``log α = w + log q(u'; t') - log q(u; t) + log |det J|``.

``w`` is ``update``'s weight, ``log p(t') - log p(t)`` here (the move creates no choice from the
prior). ``J`` is the Jacobian of the map from the continuous coordinates the move reads and
changes, ``(changed or removed choices of t, u)``, to the ones it writes, ``(choices of t'
given by the constraints, u')``. It is computed with :func:`jax.jacfwd` on the flattened
continuous leaves; discrete leaves are held constant (counting measure). Choices that keep their
value are left out: their rows of the full Jacobian are unit rows, so the determinant over the
remaining block is the full one. Only coordinates that are *present* enter: a choice of an
untaken ``cond``/``switch`` branch (a ``Masked`` leaf whose value is arbitrary under ``jit``)
counts neither as an input nor as an output; the determinant is taken over the present block
(absent rows and columns are replaced by unit ones), so their values and derivatives never
matter.

**Rules for the involution.**

- It receives the old choices and ``aux`` as :class:`ppl.ChoiceMap`\\ s holding every address
  the model (the proposal) *may* visit: values of absent choices (untaken branches) are
  arbitrary; decide with the discrete choices (e.g. the model index) which ones to use, with
  ``jnp.where``.
- ``constraints`` may give values at addresses that end up absent (an untaken branch of the new
  trace); they are ignored. A value wrapped in ``ppl.Masked(value, flag)`` is a constraint only
  where ``flag`` holds.
- The move must create no choice from the prior: every choice of ``t'`` that ``t`` does not hold
  must be given by ``constraints`` (otherwise a :class:`ppl.ModelError` is raised, at run time
  through a host callback when presence depends on traced values).
- ``new_aux`` must give a value at every address the proposal may sample from ``t'`` (checked at
  trace time); the ones it does not sample there are ignored.
- Applying the involution to its own output must give back its input. Under ``ppl.debug()``
  every step checks it (``t'`` is updated with the involution of ``(t', u')`` and compared with
  ``t``, and the auxiliary choices with ``u``, to a float tolerance), raising a
  :class:`ppl.ModelError` naming the first address that does not come back.

The info is an :class:`inference.mcmc.infos.InvolutiveInfo`: ``acceptance_rate``, ``accepted``
and ``log_det_jacobian``.

Example (a scaling move ``x -> x s``, ``s -> 1/s`` on a positive choice):
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     rate = ppl.gamma(2.0, 1.0) @ "rate"
    ...     ppl.exponential(rate) @ "y"
    >>> @ppl.gen
    ... def scale(tr):
    ...     ppl.log_normal(0.0, 0.5) @ "s"
    >>> def flip_scale(choices, aux):
    ...     s = aux["s"]
    ...     return ppl.ChoiceMap({"rate": choices["rate"] * s}), ppl.ChoiceMap({"s": 1.0 / s})
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 0.5}))
    >>> kernel = mcmc.involutive(scale, flip_scale)
    >>> tr2, info = kernel(jax.random.key(1), tr)
    >>> info._fields
    ('acceptance_rate', 'accepted', 'log_det_jacobian')
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap, Masked
from ppl.core import GenerativeFunction
from ppl.staging import debug_enabled, raise_from_callback
from ppl.errors import ModelError, fmt_addr

from .._jacobian import flatten, from_leaves, is_continuous, masked_logabsdet, presence, raw, unflatten
from .base import Kernel, accept
from .infos import InvolutiveInfo

__all__ = ["involutive", "Involutive"]

# tolerance of the debug-mode involution check (float32 round trips)
_RTOL, _ATOL = 1e-4, 1e-5


# --------------------------------------------------------------------------------- helpers
def _as_chm(x, what: str) -> ChoiceMap:
    if isinstance(x, ChoiceMap):
        return x
    if isinstance(x, dict):
        return ChoiceMap(x)
    raise ModelError(
        f"mcmc.involutive: the involution must return (constraints, new_aux), two ppl.ChoiceMaps "
        f"(or dicts of address -> value); its {what} is a {type(x).__name__}."
    )


def _unwrap(chm: ChoiceMap) -> ChoiceMap:
    """Every leaf's raw value (a ``Masked`` leaf's value whatever its flag)."""
    return from_leaves([(p, raw(v)) for p, v in chm.leaves()])


def _check_validity(fresh, n_in, n_out, names, msgs):
    """Host callback: raise if the move drew a choice from the prior or changed the dimension."""
    fresh = [np.asarray(f) for f in fresh]
    for name, f in zip(names, fresh):
        if np.any(f):
            raise_from_callback(ModelError(
                f"mcmc.involutive: the move creates the choice at {name} without giving its value: "
                "update drew it from the prior, which involutive MCMC does not allow (the "
                "acceptance ratio would be wrong). Return a value for it in the involution's "
                "constraints (e.g. computed from auxiliary choices of the proposal)."))
    n_in, n_out = np.asarray(n_in), np.asarray(n_out)
    if np.any(n_in != n_out):
        j = int(np.argmax(np.ravel(n_in != n_out)))
        raise_from_callback(ModelError(
            f"mcmc.involutive: the move maps {int(np.ravel(n_in)[j])} continuous coordinates (changed "
            f"or removed choices {msgs[0]} and auxiliary choices {msgs[1]}) to "
            f"{int(np.ravel(n_out)[j])} (constrained choices and the reverse move's auxiliary "
            "choices): an involution keeps the dimension. Carry every removed choice into new_aux "
            "(and every new one out of aux)."))
    return np.zeros(np.shape(n_in), np.float32)


def _check_roundtrip(bad, names):
    for name, b in zip(names, bad):
        if np.any(np.asarray(b)):
            raise_from_callback(ModelError(
                f"mcmc.involutive: the involution is not an involution: applying it to its own output "
                f"does not give back the value at {name} (debug-mode check, relative tolerance "
                f"{_RTOL}). It must satisfy involution(*involution(choices, aux)) == (choices, aux) "
                "on the addresses present in the trace and the proposal."))
    return np.zeros(np.shape(np.asarray(bad[0])), np.float32)


def _callback(fn, *args):
    """A host check that runs once per call even under ``vmap`` (arguments broadcast to the batch);
    its zero result is added to the log acceptance ratio so that it is never removed."""
    return jax.pure_callback(fn, jax.ShapeDtypeStruct((), jnp.float32), *args, vmap_method="broadcast_all")


# --------------------------------------------------------------------------------- kernel
@dataclasses.dataclass(frozen=True)
class Involutive(Kernel):
    """Involutive MCMC (see :func:`involutive`)."""

    proposal: GenerativeFunction
    involution: Callable
    proposal_args: tuple = ()
    name = "involutive"

    def _apply(self, choices, aux):
        out = self.involution(choices, aux, *self.proposal_args)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ModelError(
                "mcmc.involutive: the involution must return a pair (constraints, new_aux) of "
                f"ppl.ChoiceMaps, got {type(out).__name__}.")
        return _as_chm(out[0], "first output (constraints)"), _as_chm(out[1], "second output (new_aux)")

    def moves(self, trace):
        """The model addresses the involution may write.

        Examples:
            >>> import jax, ppl
            >>> from inference import mcmc
            >>> @ppl.gen
            ... def m():
            ...     ppl.normal(0.0, 1.0) @ "x"
            >>> @ppl.gen
            ... def p(tr):
            ...     ppl.normal(0.0, 1.0) @ "u"
            >>> k = mcmc.involutive(p, lambda c, a: ({"x": c["x"] + a["u"]}, {"u": -a["u"]}))
            >>> k.moves(m.simulate(jax.random.key(0)))
            [('x',)]
        """

        def f(key, tr):
            fwd = self.proposal.simulate(key, tr, *self.proposal_args)
            constraints, _ = self._apply(_unwrap(tr.choices), _unwrap(fwd.choices))
            return constraints

        struct = jax.eval_shape(f, jax.random.key(0), trace)
        return [p for p, _ in struct.leaves()]

    def step(self, key, trace, state, synced=False):
        k_fwd, k_upd, k_rev, k_acc = jax.random.split(key, 4)
        old_ch = trace.choices
        fwd = self.proposal.simulate(k_fwd, trace, *self.proposal_args)
        aux = fwd.choices
        old_leaves, aux_leaves = old_ch.leaves(), aux.leaves()

        # static structure of the constraints
        c_struct, a_struct = jax.eval_shape(lambda o, a: self._apply(_unwrap(o), _unwrap(a)), old_ch, aux)
        c_paths = {p for p, _ in c_struct.leaves()}
        # old coordinates the move may change or remove: constrained or conditionally present
        cand = [i for i, (p, v) in enumerate(old_leaves)
                if is_continuous(v) and (p in c_paths or isinstance(v, Masked))]
        aux_cont = [i for i, (p, v) in enumerate(aux_leaves) if is_continuous(v)]
        x_likes = [raw(old_leaves[i][1]) for i in cand] + [raw(aux_leaves[i][1]) for i in aux_cont]

        def f(x):
            vals = unflatten(x, x_likes)
            o = [(p, raw(v)) for p, v in old_leaves]
            for j, i in enumerate(cand):
                o[i] = (o[i][0], vals[j])
            a = [(p, raw(v)) for p, v in aux_leaves]
            for j, i in enumerate(aux_cont):
                a[i] = (a[i][0], vals[len(cand) + j])
            cons, new_aux = self._apply(from_leaves(o), from_leaves(a))
            c_l, a_l = cons.leaves(), new_aux.leaves()
            y = flatten([raw(v) for _, v in c_l if is_continuous(v)] + [raw(v) for _, v in a_l if is_continuous(v)],
                        jnp.float32)
            return y, (cons, new_aux)

        x0 = flatten(x_likes, jnp.float32)
        jac, (constraints, new_aux) = jax.jacfwd(f, has_aux=True)(x0)

        new, w, _ = trace.get_gen_fn().update(k_upd, trace, constraints, *trace.get_args())
        new_ch = new.choices
        new_leaves = dict(new_ch.leaves())
        old_map = dict(old_leaves)
        c_leaves = constraints.leaves()
        c_flag = {p: presence(v) for p, v in c_leaves}
        for p, v in new_leaves.items():
            if p in c_flag:
                c_flag[p] = jnp.broadcast_to(c_flag[p], jnp.shape(raw(v)))

        # the reverse proposal scores new_aux from t'
        rev_struct = jax.eval_shape(lambda k, t: self.proposal.simulate(k, t, *self.proposal_args).choices,
                                    k_rev, new)
        given = {p for p, _ in new_aux.leaves()}
        for p, v in rev_struct.leaves():
            if p not in given:
                raise ModelError(
                    f"mcmc.involutive: the proposal {self.proposal.name} can sample the auxiliary choice "
                    f"at {fmt_addr(p)} from the new trace, but the involution's new_aux has no value "
                    f"there (it has {sorted(given)}); new_aux must hold every auxiliary choice of the "
                    "reverse move (values at addresses the proposal does not visit are ignored).")
        for p, v in new_aux.leaves():
            if isinstance(v, Masked):
                raise ModelError(
                    f"mcmc.involutive: new_aux holds a ppl.Masked value at {fmt_addr(p)}; give plain "
                    "values (the proposal's own branches decide which auxiliary choices are present).")
        rev, _ = self.proposal.generate(k_rev, new_aux, new, *self.proposal_args)
        rev_leaves = dict(rev.choices.leaves())

        # presence masks of the Jacobian's inputs and outputs
        in_mask = []
        for i in cand:
            p, v = old_leaves[i]
            gone = jnp.logical_not(presence(new_leaves[p])) if p in new_leaves else True
            changed = c_flag.get(p, False)
            in_mask.append(jnp.ravel(presence(v) & (changed | gone)))
        for i in aux_cont:
            in_mask.append(jnp.ravel(presence(aux_leaves[i][1])))
        out_mask = []
        for p, v in c_leaves:
            if is_continuous(v):
                present = presence(new_leaves[p]) if p in new_leaves else jnp.zeros(jnp.shape(raw(v)), bool)
                out_mask.append(jnp.ravel(present & presence(v)))
        for p, v in new_aux.leaves():
            if is_continuous(v):
                out_mask.append(jnp.ravel(presence(rev_leaves[p]) if p in rev_leaves
                                          else jnp.zeros(jnp.shape(v), bool)))
        in_mask, out_mask = flatten(in_mask, bool), flatten(out_mask, bool)
        log_det = masked_logabsdet(jac, in_mask, out_mask)

        # run-time validity: no choice drawn from the prior, dimension kept
        fresh_names, fresh = [], []
        for p, v in new_leaves.items():
            if not isinstance(v, Masked) and p in old_map and not isinstance(old_map[p], Masked):
                continue  # present before and after: kept or constrained, never fresh
            was = presence(old_map[p]) if p in old_map else False
            given_here = c_flag.get(p, False)
            fresh.append(presence(v) & jnp.logical_not(was) & jnp.logical_not(given_here))
            fresh_names.append(fmt_addr(p))
        check = _callback(
            lambda fr, a, b: _check_validity(fr, a, b, fresh_names,
                                             ([fmt_addr(old_leaves[i][0]) for i in cand],
                                              [fmt_addr(aux_leaves[i][0]) for i in aux_cont])),
            fresh, jnp.sum(in_mask), jnp.sum(out_mask))
        log_alpha = w + rev.get_score() - fwd.get_score() + log_det + check

        if debug_enabled():
            log_alpha = log_alpha + self._roundtrip(k_upd, trace, new, aux, new_aux)

        out, mh = accept(k_acc, log_alpha, new, trace)
        return out, state, InvolutiveInfo(mh.acceptance_rate, mh.accepted, log_det)

    def _roundtrip(self, key, trace, new, aux, new_aux):
        """Debug mode: the involution of ``(t', u')`` must give back ``(t, u)``."""
        back_c, back_aux = self._apply(_unwrap(new.choices), _unwrap(new_aux))
        back, _, _ = new.get_gen_fn().update(key, new, back_c, *new.get_args())
        names, bad = [], []
        b_leaves = dict(back.choices.leaves())
        for p, v in trace.choices.leaves():
            b = b_leaves[p]
            pa, pb = presence(v), presence(b)
            diff = pa != pb
            both = pa & pb
            diff = diff | (both & _mismatch(raw(v), raw(b)))
            bad.append(jnp.any(diff))
            names.append(fmt_addr(p))
        ba = dict(back_aux.leaves())
        for p, v in aux.leaves():
            if p not in ba:
                raise ModelError(
                    f"mcmc.involutive: the involution applied to its own output gives no auxiliary value "
                    f"at {fmt_addr(p)} (it must return the proposal's auxiliary choices there).")
            bad.append(jnp.any(presence(v) & _mismatch(raw(v), raw(ba[p]))))
            names.append(f"auxiliary choice {fmt_addr(p)}")
        return _callback(lambda b: _check_roundtrip(b, names), bad)


def _mismatch(a, b):
    a, b = jnp.asarray(a), jnp.asarray(b)
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.abs(a - b) > _ATOL + _RTOL * jnp.abs(a)
    return a != b


def involutive(proposal: GenerativeFunction, involution: Callable, proposal_args: tuple = ()) -> Involutive:
    """Involutive MCMC kernel (reversible jump, split/merge moves, deterministic transformations).

    ``proposal(trace, *proposal_args)`` is a generative function that samples auxiliary choices
    ``u`` given the current trace; ``involution(choices, aux, *proposal_args) -> (constraints,
    new_aux)`` is a deterministic, differentiable JAX function: from the trace's choices and ``u``
    it returns new values at model addresses (applied with ``update``, possibly switching
    ``ppl.cond``/``ppl.switch`` branches) and the reverse move's auxiliary choices ``u'``. The
    acceptance ratio is ``log α = w_update + log q(u'; t') - log q(u; t) + log |det J|`` with the
    Jacobian computed automatically (see the module docstring for the rules the involution must
    follow; violations raise a :class:`ppl.ModelError`).

    Example (the move ``(x, u) -> (x + u, -u)``: a random walk written as an involution):
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 0.5) @ "y"
        >>> @ppl.gen
        ... def step(tr, s):
        ...     ppl.normal(0.0, s) @ "u"
        >>> def shift(choices, aux, s):
        ...     return ppl.ChoiceMap({"x": choices["x"] + aux["u"]}), ppl.ChoiceMap({"u": -aux["u"]})
        >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 1.0}))
        >>> res = mcmc.run(jax.random.key(1), mcmc.involutive(step, shift, (0.7,)), tr, 200)
        >>> res.choices["x"].shape, float(res.info["log_det_jacobian"].max())
        ((1, 200), 0.0)
    """
    if not isinstance(proposal, GenerativeFunction):
        raise TypeError(f"mcmc.involutive: the proposal must be a generative function (@ppl.gen), got {proposal!r}")
    if not callable(involution):
        raise TypeError(f"mcmc.involutive: the involution must be a function, got {involution!r}")
    return Involutive(proposal, involution, tuple(proposal_args))
