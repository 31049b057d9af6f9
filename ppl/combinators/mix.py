"""``ppl.mix``: a mixture of generative functions; the component index is a choice at
``"component"`` and the taken component's choices sit beside it (a :class:`SwitchGF` on it).

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def lo():
    ...     return ppl.normal(-2.0, 1.0) @ "x"
    >>> @ppl.gen
    ... def hi():
    ...     return ppl.normal(2.0, 1.0) @ "x"
    >>> tr = ppl.mix(jnp.zeros(2), lo, hi)().gf.simulate(jax.random.key(0), jnp.zeros(2))
    >>> sorted(a for a, _ in tr.choices)
    ['component', 'x']
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpyro.distributions as nd

from .. import keys
from ..choicemap import ChoiceMap
from ..core import GenerativeFunction, Trace, current_path, pack_args, push_path, trace_dataclass
from ..distributions import DistributionGF
from ..errors import AddressError, ShapeError, fmt_addr
from ._shared import LeadingArgCall, check_gfs
from .switch import SwitchGF

__all__ = ["mix", "MixGF", "MixTrace"]


@trace_dataclass
class MixTrace(Trace):
    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    component: Any
    branch: Any

    def get_choices(self):
        return ChoiceMap.from_children({"component": self.component.get_choices()}) | self.branch.get_choices()

    def get_scores(self):
        return ChoiceMap.from_children({"component": self.component.get_scores()}) | self.branch.get_scores()


_categorical_logits = DistributionGF("categorical", nd.Categorical, kw_names=("logits",))


@dataclasses.dataclass(frozen=True, eq=True)
class MixGF(GenerativeFunction):
    """A mixture of generative functions, called with ``(logits, *args)`` (see :func:`mix`)."""

    components: tuple

    @property
    def name(self):
        return "mix(" + ", ".join(c.name for c in self.components) + ")"

    @property
    def _switch(self):
        return SwitchGF(self.components)

    def _check(self, args, logits=None):
        if logits is not None:
            k = jnp.shape(logits)[-1] if jnp.ndim(logits) else None
            if jnp.ndim(logits) != 1 or k != len(self.components):
                raise ShapeError(
                    f"{self.name} at {fmt_addr(current_path())}: logits have shape "
                    f"{tuple(jnp.shape(logits))} but there are {len(self.components)} components; pass "
                    f"one logit per component (shape ({len(self.components)},))."
                )
        for _, _, struct in self._switch._shapes(args):
            if "component" in struct.child_names():
                raise AddressError(
                    f"{self.name} at {fmt_addr(current_path())}: a component uses the address "
                    "'component', which the mixture reserves for the component index; rename it."
                )

    def _simulate(self, key, logits, *args):
        self._check(args, logits)
        k1, k2 = keys.split(key)
        with push_path("component"):
            comp = _categorical_logits.simulate(k1, logits)
        br = self._switch.simulate(k2, comp.value, *args)
        return MixTrace(self, pack_args((logits, *args)), br.retval, comp.score + br.score, comp.strip(), br.strip())

    def _assess(self, choices, logits, *args):
        self._check(args, logits)
        with push_path("component"):
            lp1, idx = _categorical_logits.assess(choices.get_submap("component"), logits)
        lp2, rv = self._switch.assess(choices.without("component"), idx, *args)
        return lp1 + lp2, rv

    def _generate(self, key, constraints, logits, *args):
        self._check(args, logits)
        k1, k2 = keys.split(key)
        with push_path("component"):
            comp, w1 = _categorical_logits.generate(k1, constraints.get_submap("component"), logits)
        br, w2 = self._switch.generate(k2, constraints.without("component"), comp.value, *args)
        tr = MixTrace(self, pack_args((logits, *args)), br.retval, comp.score + br.score, comp.strip(), br.strip())
        return tr, w1 + w2

    def _edit(self, key, trace, arg, logits, args, mode):
        self._check(args, logits)
        k1, k2 = keys.split(key)
        with push_path("component"):
            if mode == "update":
                comp, w1, d1 = _categorical_logits.update(k1, trace.component, arg.get_submap("component"), logits)
            else:
                comp, w1, d1 = _categorical_logits.regenerate(k1, trace.component, arg.child("component"), logits)
        rest = arg.without("component") if mode == "update" else arg
        fn = self._switch.update if mode == "update" else self._switch.regenerate
        br, w2, d2 = fn(k2, trace.branch, rest, comp.value, *args)
        tr = MixTrace(self, pack_args((logits, *args)), br.retval, comp.score + br.score, comp.strip(), br.strip())
        discard = (ChoiceMap.from_children({"component": d1}) if not d1.is_empty() else ChoiceMap.empty()) | d2
        return tr, w1 + w2, discard

    def _update(self, key, trace, constraints, logits, *args):
        return self._edit(key, trace, constraints, logits, args, "update")

    def _regenerate(self, key, trace, selection, logits, *args):
        return self._edit(key, trace, selection, logits, args, "regenerate")


class _MixCall(LeadingArgCall):
    """``ppl.mix(logits, *components)``: call with the components' arguments."""

    @property
    def logits(self):
        return self.first


def mix(logits, *components) -> _MixCall:
    """A mixture: ``ppl.mix(logits, f, g)(*args) @ "m"`` records the index at ``("m", "component")``.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def lo():
        ...     return ppl.normal(-2.0, 1.0) @ "x"
        >>> @ppl.gen
        ... def hi():
        ...     return ppl.normal(2.0, 1.0) @ "x"
        >>> @ppl.gen
        ... def model():
        ...     return ppl.mix(jnp.log(jnp.array([0.3, 0.7])), lo, hi)() @ "m"
        >>> ch = model.simulate(jax.random.key(0)).choices
        >>> ("m", "component") in ch and ("m", "x") in ch
        True
    """
    check_gfs(components, "ppl.mix")
    return _MixCall(MixGF(tuple(components)), logits)
