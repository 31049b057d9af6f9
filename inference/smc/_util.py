"""Internal helpers shared by the SMC modules: staging, choice-map coercion, dead-particle checks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap
from ppl.core import STATE, _as_choicemap, pack_args, unpack_args
from ppl.errors import NonFiniteError

from ..sharding import active_mesh, batch_sharding

__all__ = ["AllParticlesDeadError", "as_choicemap", "staged", "check_alive", "pack_args", "unpack_args"]


class AllParticlesDeadError(NonFiniteError):
    """Every particle had weight zero (log weight ``-inf`` or NaN); reported in debug mode."""


def as_choicemap(x) -> ChoiceMap:
    return _as_choicemap(x, "observations")


def staged(static_argnames: tuple, packed_argnames: tuple = ()):
    """``jax.jit`` an algorithm, packing model arguments so Python ints/strings stay static.

    The arguments named in ``packed_argnames`` are model argument tuples: their non-array leaves
    (Python ints, bools, strings) become static, arrays and floats are traced, as in the GFI's own
    staging. The debug flag and the active device mesh (``inference.sharding``) are part of the
    compilation key.
    """

    def deco(fn):
        def inner(*a, _debug=False, _mesh=None, **kw):
            old = STATE.debug
            STATE.debug = _debug
            STATE.stage_depth += 1  # GFI calls inside trace inline (no nested jit per call)
            try:
                for name in packed_argnames:
                    kw[name] = unpack_args(kw[name])
                with batch_sharding(_mesh):  # particle axes laid out over the mesh, if any
                    return fn(*a, **kw)
            finally:
                STATE.debug = old
                STATE.stage_depth -= 1

        jitted = jax.jit(inner, static_argnames=tuple(static_argnames) + ("_debug", "_mesh"))

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            for name in packed_argnames:
                kw[name] = pack_args(tuple(kw[name]) if isinstance(kw[name], list) else kw[name])
            from ppl.core import _CALLBACK_ERRORS, pop_callback_error

            if _CALLBACK_ERRORS:
                pop_callback_error()
            try:
                return jitted(*a, _debug=bool(STATE.debug), _mesh=active_mesh(), **kw)
            except jax.errors.JaxRuntimeError as e:
                err = pop_callback_error()
                if err is not None:  # a debug-mode check failed at run time: raise the ppl error
                    raise err from e
                raise

        wrapper.jitted = jitted
        return wrapper

    return deco


def _raise_dead(dead, where):
    from ppl.core import raise_from_callback

    if np.any(dead):
        raise_from_callback(AllParticlesDeadError(
            f"{where}: every particle has weight zero (log weight -inf or NaN); the evidence "
            "estimate is 0. Check that the observations are possible under the model (e.g. in "
            "the support of the likelihood), use more particles, or a better proposal."
        ))


def check_alive(dead, where: str):
    """In debug mode, raise :class:`AllParticlesDeadError` at run time when ``dead`` is True."""
    if STATE.debug:
        jax.debug.callback(functools.partial(_raise_dead, where=where), dead)


def logmeanexp(x, axis=-1):
    n = jnp.shape(x)[axis]
    return jax.nn.logsumexp(x, axis=axis) - jnp.log(float(n))
