"""Gaussian random-walk Metropolis on the selected continuous choices, in unconstrained space.

``mcmc.rw(selection, step_size, adapt)`` proposes ``u' = u + step_size * N(0, I)`` for the
selected sites' unconstrained values ``u`` (a positive site moves as ``log x``, a unit-interval
site as ``logit x``, a simplex by stick-breaking; see :mod:`inference.mcmc.transforms`) and
accepts with ``log alpha = log p(u') - log p(u)``, where ``log p(u)`` is the model's log density
plus the log-Jacobian of ``x = T(u)``. The proposal is symmetric in ``u``, so no proposal term
enters. It needs no gradient, so it also moves sites whose density is not differentiable.

**Step-size adaptation.** With ``adapt=True`` (the default) the step size is tuned during
``mcmc.run``'s burn-in by dual averaging (the scheme ``hmc``/``mala`` use, on ``log step_size``)
toward the acceptance rate ``target_accept = 0.234``, the rate that maximizes the efficiency of
random-walk Metropolis on high-dimensional product-form targets (Roberts, Gelman and Gilks,
1997); for one or two coordinates about 0.44 is better (pass ``target_accept=0.44``). After the
burn-in the step size is frozen (the dual-averaging average), so the sampling phase is a fixed
Metropolis-Hastings kernel. Without burn-in, or one step at a time through ``kernel(key,
trace)``, the given ``step_size`` is used. The kernel is usable on one trace with
``kernel.init(key, trace, n_warmup)`` / ``kernel.step(key, trace, state)``, and on many with
``mcmc.run`` (chains are vmapped).

Each step's info is an :class:`inference.mcmc.infos.RWInfo` ``(acceptance_rate, accepted,
step_size)``.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     s = ppl.gamma(3.0, 1.0) @ "s"
    ...     ppl.normal(0.0, s) @ "y"
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 1.0}))
    >>> res = mcmc.run(jax.random.key(1), mcmc.rw("s", 1.0), tr, 200, n_chains=2, burn_in=200)
    >>> bool(jnp.all(res.choices["s"] > 0)), res.info.step_size.shape
    (True, (2, 200))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ppl.choicemap import Masked, Selection, select
from ppl.errors import ModelError

from .base import accept, as_selection
from .gradient import UnconstrainedKernel
from .infos import RWInfo

__all__ = ["rw", "RW", "rw_proposal", "rw_step"]


def rw_proposal(key, x, step_size, scale=None):
    """The Gaussian random-walk proposal ``x + step_size * scale * N(0, I)``.

    ``x`` is an array or a pytree (e.g. a :class:`ppl.ChoiceMap`); only its floating-point leaves
    move. ``scale`` is ``None`` (1), a scalar, or a pytree shaped like ``x`` of per-coordinate
    scales. A bare array uses ``key`` for its noise; a pytree splits ``key`` into one key per leaf.
    The proposal is symmetric, so it adds no term to the MH ratio. Every random-walk move of the
    library (``mcmc.rw``, the moves of ``smc.tempered``/``smc.ais``) proposes through this function.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> ch = rw_proposal(jax.random.key(0), ppl.ChoiceMap({"a": 1.0, "n": 3}), 0.1)
        >>> int(ch["n"]), bool(ch["a"] != 1.0)
        (3, True)
        >>> rw_proposal(jax.random.key(0), jnp.zeros(3), 0.5, jnp.zeros(3)).tolist()
        [0.0, 0.0, 0.0]
    """
    if isinstance(x, (jax.Array, jnp.ndarray)):
        leaves, treedef, ks = [x], None, [key]
    else:
        leaves, treedef = jax.tree_util.tree_flatten(x)
        ks = jax.random.split(key, max(len(leaves), 1))
    if scale is None or treedef is None or isinstance(scale, (int, float)) or getattr(scale, "ndim", None) == 0:
        scales = [scale] * len(leaves)          # one scale for every leaf (or the bare array's own)
    else:
        scales = jax.tree_util.tree_leaves(scale)
    out = []
    for k, v, s in zip(ks, leaves, scales):
        v = jnp.asarray(v)
        if jnp.issubdtype(v.dtype, jnp.floating):
            e = step_size * jax.random.normal(k, v.shape, v.dtype)
            v = v + (e if s is None else e * s)
        out.append(v)
    return out[0] if treedef is None else jax.tree_util.tree_unflatten(treedef, out)


def rw_step(key, logdensity_fn, x, step_size, scale=None, logdensity=None):
    """One random-walk Metropolis step on ``x`` (an array or a pytree) for the target ``logdensity_fn``.

    ``logdensity_fn(key, x) -> (log_density, aux)`` (``aux`` any pytree carried along with ``x``,
    e.g. the parts of the density; the key is for functions that need one, e.g.
    ``model.generate``). Proposes with :func:`rw_proposal` and accepts with
    :func:`inference.mcmc.base.accept`. ``logdensity`` is ``(log_density, aux)`` at ``x`` when
    known (it is computed otherwise). Returns ``((x, log_density, aux), info)`` with ``info`` an
    :class:`inference.mcmc.infos.MHInfo`. The key splits into three: proposal, density, accept.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> target = lambda k, x: (-0.5 * jnp.sum(x ** 2), ())
        >>> (x, lp, _), info = rw_step(jax.random.key(0), target, jnp.zeros(2), 0.5)
        >>> x.shape, info._fields
        ((2,), ('acceptance_rate', 'accepted'))
    """
    k_prop, k_dens, k_acc = jax.random.split(key, 3)
    x_new = rw_proposal(k_prop, x, step_size, scale)
    ld_new, aux_new = logdensity_fn(k_dens, x_new)
    ld, aux = logdensity_fn(k_dens, x) if logdensity is None else logdensity
    return accept(k_acc, ld_new - ld, (x_new, ld_new, aux_new), (x, ld, aux))


def _continuous_paths(trace):
    out = []
    for p, v in trace.get_choices().leaves():
        dtype = getattr(v, "dtype", None) or jnp.result_type(v)
        if p and not isinstance(v, Masked) and jnp.issubdtype(dtype, jnp.floating):
            out.append(p)
    return out


@dataclasses.dataclass(frozen=True)
class RW(UnconstrainedKernel):
    """Gaussian random-walk Metropolis in unconstrained space (see :func:`rw`)."""

    selection: Selection | None = None
    step_size: float = 0.5
    adapt: bool = True
    target_accept: float = 0.234
    name = "rw"

    @property
    def adapt_step_size(self) -> bool:
        return self.adapt

    def _selection(self, trace):
        if self.selection is not None:
            return self.selection
        paths = _continuous_paths(trace)
        if not paths:
            raise ModelError("mcmc.rw: the trace has no continuous (floating-point), always-present choice to "
                             "move; pass a selection, or use mcmc.mh/mcmc.gibbs for discrete choices.")
        return select(*paths)

    @staticmethod
    def _value_and_grad(view, trace, u, unravel):
        return view.log_density(trace, unravel(u)), ()

    @staticmethod
    def _info(mh, eps, diverging):
        return RWInfo(mh.acceptance_rate, mh.accepted, eps)

    def _propose(self, key, vg, u, lp, g, eps):
        u2 = rw_proposal(key, u, eps)
        lp2, g2 = vg(u2)
        return u2, lp2, g2, jnp.zeros((), lp.dtype)


def rw(selection=None, step_size: float = 0.5, adapt: bool = True, target_accept: float = 0.234) -> RW:
    """Gaussian random-walk Metropolis on the selected continuous choices, in unconstrained space.

    ``selection`` is a :class:`ppl.Selection`, an address or a list of addresses; ``None`` moves
    every continuous, always-present choice of the trace. A trace does not record which of its
    choices were observed, so with ``None`` exclude the observations: ``mcmc.rw(~ppl.select("ys"))``
    (``None`` suits traces whose only continuous choices are latents, e.g. a prior-only model
    or observations that are discrete). ``step_size`` is the proposal's standard deviation per
    unconstrained coordinate; with ``adapt=True`` it is tuned during ``mcmc.run``'s burn-in toward
    acceptance rate ``target_accept`` (0.234 by default, see the module docstring) and then frozen.
    Discrete or branch-local selected choices raise a :class:`ppl.ModelError` naming the site.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     return ppl.beta(2.0, 2.0) @ "p"
        >>> tr = model.simulate(jax.random.key(0))
        >>> kernel = rw(step_size=0.8)
        >>> state = kernel.init(jax.random.key(1), tr)
        >>> tr2, state, info = kernel.step(jax.random.key(2), tr, state)
        >>> bool((tr2.choices["p"] > 0) & (tr2.choices["p"] < 1)), info._fields
        (True, ('acceptance_rate', 'accepted', 'step_size'))
    """
    sel = None if selection is None else as_selection(selection)
    if not float(step_size) > 0:
        raise ValueError(f"mcmc.rw: step_size must be positive, got {step_size}")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"mcmc.rw: target_accept must be in (0, 1), got {target_accept}")
    return RW(sel, float(step_size), bool(adapt), float(target_accept))
