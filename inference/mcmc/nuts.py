"""NUTS on the selected continuous choices, using NumPyro's implementation.

The potential energy handed to ``numpyro.infer.hmc.hmc(potential_fn_gen=..., algo="NUTS")`` is
``-log p`` of the model over the selected sites in unconstrained space, given the trace's other
choices (see :mod:`inference.mcmc.transforms`), as a function of ONE flat vector: the selected
sites' unconstrained values raveled in ``jax.flatten_util.ravel_pytree`` order (the order in
which NumPyro itself ravels a dict of sites for its momenta and mass matrix, so the draws are
the ones a dict position gives). NumPyro's integrator and tree building then handle one array
instead of one per site: fewer operations per leapfrog step, most for models with many small
sites. NumPyro's warm-up adaptation (dual-averaging step
size, windowed diagonal or dense mass matrix) runs during the runner's burn-in; afterwards the
adapted values are frozen. The kernel's state is NumPyro's ``HMCState``.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     mu = ppl.normal(0.0, 1.0) @ "mu"
    ...     ppl.normal(mu, 1.0) @ "y"
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 1.0}))
    >>> res = mcmc.run(jax.random.key(1), mcmc.nuts(ppl.select("mu")), tr, 100, burn_in=100)
    >>> res.choices["mu"].shape
    (1, 100)
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc import ParamInfo
from numpyro.infer.hmc import hmc as numpyro_hmc

from ppl.choicemap import Selection

from .base import Kernel, as_selection, selected_paths
from .infos import NUTSInfo
from .transforms import UnconstrainedView, unravel_like

__all__ = ["nuts", "NUTS", "NUTSState"]

# NumPyro's init_kernel configures its sample_kernel through closure variables (warm-up length,
# tree depth): keep one (init, sample) pair per kernel and warm-up length, the most recently
# used _MAX_PAIRS of them (an evicted pair is rebuilt on demand; compiled programs are cached by
# jax.jit on the kernel, not here).
_MAX_PAIRS = 64
_PAIRS: "collections.OrderedDict" = collections.OrderedDict()
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class NUTS(Kernel):
    """The No-U-Turn sampler from NumPyro on the selected continuous choices (see :func:`nuts`)."""

    selection: Selection
    step_size: float = 1.0
    adapt_step_size: bool = True
    adapt_mass_matrix: bool = True
    dense_mass: bool = False
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    name = "nuts"

    def moves(self, trace):
        """The kernel moves the selected choices only."""
        return self.selection

    def _view(self, trace):
        paths = selected_paths(trace, self.selection, "mcmc.nuts", continuous=True)
        return UnconstrainedView(trace.get_gen_fn(), paths, "mcmc.nuts")

    def _pair(self, n_warmup, trace=None):
        """NumPyro's (init_kernel, sample_kernel) for this kernel and warm-up length. A pair built
        afresh (first use, or after eviction from the LRU cache) is configured by running its
        init_kernel abstractly on ``trace`` when the caller is about to use its sample_kernel."""
        k = (self, n_warmup)
        with _LOCK:
            fresh = k not in _PAIRS
            if fresh:
                gen = lambda trace: self._flat_potential(self._view(trace), trace)  # noqa: E731
                _PAIRS[k] = numpyro_hmc(potential_fn_gen=gen, algo="NUTS")
                while len(_PAIRS) > _MAX_PAIRS:
                    _PAIRS.popitem(last=False)
            _PAIRS.move_to_end(k)
            pair = _PAIRS[k]
        if fresh and trace is not None:
            jax.eval_shape(lambda t: self._numpyro_init(pair[0], jax.random.key(0), t, n_warmup), trace)
        return pair

    def _init_kw(self, n_warmup):
        return dict(
            num_warmup=n_warmup,
            step_size=self.step_size,
            adapt_step_size=self.adapt_step_size and n_warmup > 0,
            adapt_mass_matrix=self.adapt_mass_matrix and n_warmup > 0,
            dense_mass=self.dense_mass,
            target_accept_prob=self.target_accept_prob,
            max_tree_depth=self.max_tree_depth,
        )

    @staticmethod
    def _unravel(view, trace):
        """``flat -> {path: u}`` for the selected sites of ``trace`` (shapes only: nothing of the
        model is evaluated)."""
        return unravel_like(view.read_shapes(trace)[0])

    def _flat_potential(self, view, trace):
        """``flat -> -log density`` of the selected sites' raveled unconstrained values."""
        pot, unravel = view.potential(trace), self._unravel(view, trace)
        return lambda z: pot(unravel(z))

    def _synced_state(self, view, trace):
        """``(z, potential_energy, z_grad)`` at the trace's current values (z flat)."""
        z = ravel_pytree(view.read(trace))[0]
        pe, g = jax.value_and_grad(self._flat_potential(view, trace))(z)
        return z, pe, g

    def _numpyro_init(self, init_kernel, key, trace, n_warmup):
        z, pe, g = self._synced_state(self._view(trace), trace)
        return init_kernel(ParamInfo(z, pe, g), model_args=(trace,), rng_key=key, **self._init_kw(n_warmup))

    def init(self, key, trace, n_warmup=0):
        return NUTSState(self._numpyro_init(self._pair(n_warmup)[0], key, trace, n_warmup), n_warmup)

    def step(self, key, trace, state, synced=False):
        view = self._view(trace)
        _, sample_kernel = self._pair(state.n_warmup, trace)
        st = state.hmc
        if not synced:
            z, pe, g = self._synced_state(view, trace)
            st = st._replace(z=z, potential_energy=pe, z_grad=g)
        new_state, info = self._transition(key, sample_kernel, trace, st, state.n_warmup)
        return self.realize(trace, new_state), new_state, info

    @staticmethod
    def _transition(key, sample_kernel, trace, st, n_warmup):
        new = sample_kernel(st._replace(rng_key=key), model_args=(trace,))
        info = NUTSInfo(new.accept_prob, jnp.logical_not(new.diverging), new.diverging, new.num_steps,
                        new.adapt_state.step_size, new.energy)
        return NUTSState(new, n_warmup), info

    #: ``mcmc.run`` may hold the trace fixed and move the position in the state only (see
    #: :mod:`inference.mcmc.base`)
    positional = True

    def position_step(self, key, template, state):
        """One transition of the position held in ``state``: ``(state, info)``, as
        ``step(key, trace, state, synced=True)`` for the trace at that position, without writing
        a trace (``template`` supplies the unselected choices and arguments; see :meth:`realize`).

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def model():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> tr = model.simulate(jax.random.key(0))
            >>> k = nuts(ppl.select("x"), step_size=0.5)
            >>> st = k.init(jax.random.key(1), tr)
            >>> st2, info = k.position_step(jax.random.key(2), tr, st)
            >>> tr2, _, _ = k.step(jax.random.key(2), tr, st, synced=True)
            >>> bool(k.realize(tr, st2).choices["x"] == tr2.choices["x"])
            True
        """
        _, sample_kernel = self._pair(state.n_warmup, template)
        return self._transition(key, sample_kernel, template, state.hmc, state.n_warmup)

    def position_choices(self, template, state):
        """``{path: value}`` of the selected choices at ``state``'s position without running the
        model, or ``None`` (see ``hmc``'s ``position_choices``).

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def model():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> tr = model.simulate(jax.random.key(0))
            >>> k = nuts(ppl.select("x"))
            >>> bool(k.position_choices(tr, k.init(jax.random.key(1), tr))[("x",)] == tr.choices["x"])
            True
        """
        view = self._view(template)
        shapes, transforms = view.read_shapes(template)
        return view.constrained(transforms, template, unravel_like(shapes)(state.hmc.z))

    def realize(self, template, state):
        """The trace at ``state``'s position: ``template`` with the selected choices written from
        the flat unconstrained vector (one run of the model's ``update``).

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def model():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> tr = model.simulate(jax.random.key(0))
            >>> k = nuts(ppl.select("x"))
            >>> bool(k.realize(tr, k.init(jax.random.key(1), tr)).choices["x"] == tr.choices["x"])
            True
        """
        view = self._view(template)
        return view.realize(template, self._unravel(view, template)(state.hmc.z))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class NUTSState:
    """NumPyro's ``HMCState`` (position ``z`` and its gradient as one flat vector, see the module
    docstring) plus the (static) warm-up length it was initialized with."""

    hmc: Any
    n_warmup: int = dataclasses.field(metadata=dict(static=True), default=0)


def nuts(selection, step_size: float = 1.0, adapt_step_size: bool = True, adapt_mass_matrix: bool = True,
         dense_mass: bool = False, target_accept_prob: float = 0.8, max_tree_depth: int = 10) -> NUTS:
    """NUTS (NumPyro's implementation) on the selected continuous choices.

    Step size and a diagonal (or, with ``dense_mass=True``, dense) mass matrix adapt during
    ``mcmc.run``'s burn-in, as in NumPyro's ``NUTS``; without burn-in (or when called directly as
    ``kernel(key, trace)``) the given ``step_size`` and a unit mass matrix are used. NumPyro's
    integrator moves one flat vector (the selected sites' unconstrained values, raveled; the
    mass matrix is over its coordinates), so the cost per leapfrog step barely grows with the
    number of selected sites. Discrete or branch-local selected choices raise a
    :class:`ppl.ModelError` naming the site.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     return ppl.log_normal(0.0, 1.0) @ "s"
        >>> tr = model.simulate(jax.random.key(0))
        >>> tr2, info = nuts(ppl.select("s"), step_size=0.5)(jax.random.key(1), tr)
        >>> bool(tr2.choices["s"] > 0)
        True
    """
    return NUTS(as_selection(selection), float(step_size), bool(adapt_step_size), bool(adapt_mass_matrix),
                bool(dense_mass), float(target_accept_prob), int(max_tree_depth))
