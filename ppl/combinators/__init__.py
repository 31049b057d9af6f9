"""Combinators: generative functions built from generative functions.

- :func:`vmap` / ``gf.repeat(n)`` (:mod:`.vmap`): independent copies; choices gain a leading axis.
- :func:`scan` (:mod:`.scan`): a step ``(carry, x) -> (carry, y)`` iterated with ``lax.scan``;
  choices are stacked over time.
- :func:`cond` / :func:`switch` (:mod:`.switch`): stochastic branching on a sampled predicate or
  index; the taken branch's choices appear directly under the call's address.
- :func:`mix` (:mod:`.mix`): a mixture recording the component index at ``"component"``.

Each is a full GFI implementation and they nest inside each other and inside ``@gen``. Pieces
they share (the stacked-copies trace, pending calls, shape checks) are in :mod:`._shared`; the
masked choice-map algebra of branches is :mod:`ppl.masking`.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def step(x, _):
    ...     x = ppl.normal(0.9 * x, 1.0) @ "x"
    ...     ppl.normal(x, 0.5) @ "y"
    ...     return x, x
    >>> hmm = ppl.scan(step, length=5)
    >>> tr = hmm.simulate(jax.random.key(0), 0.0, None)
    >>> tr.choices["y"].shape
    (5,)
"""

from __future__ import annotations

from ._shared import StackedTrace
from .mix import MixGF, MixTrace, mix
from .scan import ScanGF, ScanTrace, scan
from .switch import SwitchGF, SwitchTrace, concrete_index, cond, switch
from .vmap import VmapGF, VmapTrace, repeat, vmap

__all__ = ["vmap", "repeat", "scan", "cond", "switch", "mix", "VmapGF", "ScanGF", "SwitchGF", "MixGF",
           "VmapTrace", "ScanTrace", "SwitchTrace", "MixTrace", "StackedTrace", "concrete_index"]
