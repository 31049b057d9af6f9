"""The generative function interface (GFI): the one interface every model implements.

Every distribution, every ``@gen`` function and every combinator is a
:class:`GenerativeFunction` with the five methods

- ``simulate(key, *args) -> Trace``
- ``assess(choices, *args) -> (log_density, retval)`` (choices must be complete)
- ``generate(key, constraints, *args) -> (Trace, log_weight)``
- ``update(key, trace, constraints, *args) -> (Trace, log_weight, discard)``
- ``regenerate(key, trace, selection, *args) -> (Trace, log_weight, discard)``

Weights (``q`` is each site's own prior, the internal proposal):

- ``generate``: ``log p(all choices) - log q(unconstrained choices)``, i.e. the log density of
  the constrained choices given the sampled ones.
- ``update``: ``log p(t'; x') - log p(t; x) - log q(fresh)`` (Gen's definition): choices visited
  in both traces contribute ``new - old`` log density, fresh choices nothing, choices removed
  because the control path changed ``-log p`` (they go to ``discard``).
- ``regenerate``: the MH acceptance ratio of the prior proposal on the selection: as ``update``,
  but selected and removed choices contribute nothing.
- At a branch switch of ``cond``/``switch``/``mix`` the choices at addresses both branches visit
  keep their values. The reverse-proposal accounting of custom moves is the inference code's
  (``mcmc.mh(proposal)``), not the GFI's.

Calling a GFI method from ordinary Python (not inside another model) traces and compiles it once
per argument structure with ``jax.jit``: Python ints, bools, strings and other non-array
arguments of the model are static (Python control flow may depend on them), arrays and floats are
data (new values do not recompile). Inside a model or inside the user's own ``jax.jit`` the
methods are traced inline.

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def model(mu):
    ...     return ppl.normal(mu, 1.0) @ "x"
    >>> tr = model.simulate(jax.random.key(0), 0.5)
    >>> logp, _ = model.assess(tr.choices, 0.5)
    >>> bool(abs(logp - tr.score) < 1e-6)
    True

Module layout: this module holds the GFI itself (:class:`GenerativeFunction`,
:class:`Invocation`, site keys, selection and constraint checks) and re-exports the pieces it is
built from, so ``from ppl.core import X`` keeps working for every name it ever exported:

- :mod:`ppl.state`: thread-local tracing state, :class:`Interceptor`, :func:`intercept`.
- :mod:`ppl.arguments`: static vs data arguments (:func:`pack_args`), input coercion.
- :mod:`ppl.trace`: the :class:`Trace` base class (the trace protocol) and score arithmetic.
- :mod:`ppl.staging`: compilation of top-level calls and algorithms, debug mode, run-time errors.
"""

from __future__ import annotations

import threading
import zlib

import jax

from . import keys
from .arguments import (  # noqa: F401  (re-exported)
    Static,
    _as_choicemap,
    _lists_to_arrays,
    as_args_tuple,
    as_choicemap,
    check_key,
    is_data,
    pack_args,
    unpack_args,
)
from .choicemap import ChoiceMap, Selection
from .errors import AddressError, ModelError, fmt_addr
from .lru import LRUCache
from .staging import (  # noqa: F401  (re-exported)
    _CALLBACK_ERRORS,
    _N_DATA,
    _staged_call,
    _staged_runner,
    _stage_enabled,
    debug,
    defer_value_check,
    pop_callback_error,
    raise_from_callback,
    stage_gfi_call,
)
from .state import (  # noqa: F401  (re-exported)
    STATE,
    Interceptor,
    active_interceptor,
    current_path,
    intercept,
    push_path,
)
from .trace import (  # noqa: F401  (re-exported)
    Trace,
    _prefix_bcast,
    add,
    choice_paths,
    masked_total,
    trace_dataclass,
    tree_select,
    zero,
)

__all__ = [
    "GenerativeFunction",
    "Trace",
    "Invocation",
    "Static",
    "pack_args",
    "unpack_args",
    "debug",
    "current_path",
    "intercept",
    "Interceptor",
    "as_args_tuple",
    "as_choicemap",
]

_check_key = check_key


# ------------------------------------------------------------------------------ invocation
class Invocation:
    """``gf(*args)``: a pending call, traced into the enclosing model by ``@ "addr"``."""

    __slots__ = ("gf", "args")

    def __init__(self, gf, args):
        self.gf = gf
        self.args = args

    def __matmul__(self, addr):
        if not STATE.handlers:
            raise ModelError(
                f"`{self.gf.name}(...) @ {addr!r}` was used outside a @gen function; to run a "
                f"generative function directly call its GFI, e.g. `{self.gf.name}.simulate(key, *args)`."
            )
        return STATE.handlers[-1].visit(addr, self.gf, self.args)

    def __repr__(self):
        return f"Invocation({self.gf.name}, {len(self.args)} args)"

    def _not_a_value(self, *_):
        name = getattr(self.gf, "name", "gf")
        raise ModelError(
            f"`{name}(...)` was used as a value, but without `@ \"address\"` it is only a pending "
            f"call: write e.g. `x = {name}(...) @ \"x\"` inside a @gen function to trace the "
            "choice and get its value."
        )

    # Arithmetic, comparisons and conversions of a call without `@ "addr"`: a clear error instead
    # of "Invocation is not a valid JAX type".
    __jax_array__ = __array__ = __float__ = __int__ = __index__ = __complex__ = _not_a_value
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _not_a_value
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _not_a_value
    __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = __rmatmul__ = _not_a_value
    __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __getitem__ = __iter__ = __len__ = _not_a_value
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __invert__ = _not_a_value


# An Invocation inside a pytree (returned from a model, passed to jnp or as an argument) is the
# same mistake: flattening it raises the error above.
jax.tree_util.register_pytree_node(
    Invocation, lambda inv: inv._not_a_value(), lambda aux, children: None
)


def address_hash(addr: str) -> int:
    """A stable 31-bit hash of an address (what a site's key is folded with)."""
    return zlib.crc32(addr.encode()) & 0x7FFFFFFF


def site_key(key, addr: str):
    """The key of the site at ``addr``: independent of visiting order, stable across methods."""
    if isinstance(key, keys.KeyTable):
        k = key.table.get(addr)
        if k is not None:  # precomputed outside a loop (bit-identical to the fold_in below)
            return k
        key = key.raw
    return keys.fold_in(key, address_hash(addr))


class GenerativeFunction:
    """Base class of everything that can be traced at an address with ``gf(*args) @ "addr"``.

    Subclasses implement ``_simulate``, ``_assess``, ``_generate``, ``_update``, ``_regenerate``;
    the public methods validate inputs and stage (jit) top-level calls.

    Examples:
        >>> import jax, ppl
        >>> tr = ppl.normal.simulate(jax.random.key(1), 0.0, 1.0)
        >>> tr.choices[()].shape
        ()
    """

    name = "generative_function"

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError(f"{self.name} takes positional arguments only when called in a model")
        return Invocation(self, args)

    def __matmul__(self, addr):
        raise ModelError(
            f"{self.name} was used with @ {addr!r} without being called: write "
            f"`{self.name}(args...) @ {addr!r}`."
        )

    # -- public GFI -----------------------------------------------------------------------------
    def _run(self, method, all_args):
        if _stage_enabled():
            return stage_gfi_call(self, method, all_args)
        if not STATE.interceptors:
            return getattr(self, "_" + method)(*all_args)
        STATE.gfi_depth += 1
        try:
            out = getattr(self, "_" + method)(*all_args)
        finally:
            STATE.gfi_depth -= 1
        if STATE.gfi_depth == 0:
            for icpt in reversed(STATE.interceptors):
                hook = getattr(icpt, "returned", None)
                if hook is not None:
                    out = hook(self, method, out)
        return out

    def simulate(self, key, *args) -> Trace:
        """Sample all choices from the prior: returns a :class:`Trace`."""
        _check_key(key, f"{self.name}.simulate")
        return self._run("simulate", (key,) + args)

    def assess(self, choices, *args):
        """``(log p(choices; args), retval)``; ``choices`` must be complete."""
        choices = _as_choicemap(choices, f"{self.name}.assess: choices")
        return self._run("assess", (choices,) + args)

    def generate(self, key, constraints, *args):
        """``(trace, log_weight)`` with ``constraints`` fixed, the rest sampled from the prior."""
        _check_key(key, f"{self.name}.generate")
        constraints = _as_choicemap(constraints, f"{self.name}.generate: constraints")
        return self._run("generate", (key, constraints) + args)

    def update(self, key, trace, constraints, *args):
        """``(new_trace, log_weight, discard)``: new arguments and/or new values at addresses."""
        _check_key(key, f"{self.name}.update")
        constraints = _as_choicemap(constraints, f"{self.name}.update: constraints")
        if not isinstance(trace, Trace):
            raise TypeError(f"{self.name}.update: expected a Trace, got {type(trace).__name__}")
        return self._run("update", (key, trace, constraints) + args)

    def regenerate(self, key, trace, selection, *args):
        """``(new_trace, log_weight, discard)``: resample the selected choices from the prior."""
        _check_key(key, f"{self.name}.regenerate")
        if not isinstance(selection, Selection):
            raise TypeError(f"{self.name}.regenerate: expected a Selection (ppl.select(...)), got {selection!r}")
        if not isinstance(trace, Trace):
            raise TypeError(f"{self.name}.regenerate: expected a Trace, got {type(trace).__name__}")
        if _REGEN.depth == 0 and not STATE.handlers:  # the outermost call: check the selection
            _check_selection_in_trace(f"{self.name}.regenerate", selection, trace)
        _REGEN.depth += 1
        try:
            return self._run("regenerate", (key, trace, selection) + args)
        finally:
            _REGEN.depth -= 1

    # -- combinator sugar -----------------------------------------------------------------------
    def repeat(self, n: int):
        """``n`` independent copies (choices gain a leading axis of size ``n``).

        Examples:
            >>> import jax, ppl
            >>> tr = ppl.normal.repeat(4).simulate(jax.random.key(0), 0.0, 1.0)
            >>> tr.choices[()].shape
            (4,)
        """
        from .combinators import repeat

        return repeat(self, n)

    def vmap(self, in_axes=0):
        """Vectorize over arguments (see :func:`ppl.vmap`)."""
        from .combinators import vmap

        return vmap(self, in_axes=in_axes)

    # -- helpers for implementations ------------------------------------------------------------
    def address_shapes(self, *args):
        """The static structure of this function's choices for ``args`` (via ``jax.eval_shape``)."""
        key = jax.random.key(0)
        return jax.eval_shape(lambda k, a: self.simulate(k, *a).choices, key, args)

    def __repr__(self):
        return f"<generative function {self.name}>"


class _RegenDepth(threading.local):
    def __init__(self):
        self.depth = 0


_REGEN = _RegenDepth()
_SELECTION_OK = LRUCache(4096)  # (trace structure, selection) pairs already checked (most recent)


def _check_selection_in_trace(where: str, selection, trace):
    """Raise an AddressError if ``selection`` names an address that is not in ``trace`` (choices of
    untaken branches count as present; a prefix of an address selects everything below it)."""
    paths = selection.named_paths(all_operators=True)
    if not paths:
        return
    try:
        cache_key = (jax.tree_util.tree_structure(trace), selection)
        if cache_key in _SELECTION_OK:
            return
    except TypeError:  # unhashable static structure: check without caching
        cache_key = None
    present = choice_paths(trace)
    if present is None:
        return  # an exotic trace type: nothing to check against
    for path in sorted(paths):
        if path == () or any(p[: len(path)] == path for p in present):
            continue
        shown = [p[0] if len(p) == 1 else p for p in present]
        more = f" and {len(shown) - 20} more" if len(shown) > 20 else ""
        raise AddressError(
            f"{where}: the selection names address {fmt_addr(path)}, but the trace has no choice "
            f"there (its addresses are {shown[:20]}{more}); fix the spelling, or select a prefix "
            "of existing addresses."
        )
    if cache_key is not None:
        _SELECTION_OK[cache_key] = True


def check_constraints_visited(constraints: ChoiceMap, visited, where: str):
    """Raise if ``constraints`` holds a top-level name the model never visited."""
    for name in constraints.child_names():
        if name not in visited and not constraints.get_submap(name).is_empty():
            raise AddressError(
                f"{where}: address {fmt_addr(current_path() + (name,))} is in the constraints but "
                f"the model never visits it (it visits {sorted(visited)}); remove it or fix the "
                "spelling."
            )
    if constraints.has_value():
        raise AddressError(
            f"{where}: a value was given at {fmt_addr(current_path())}, which is a model call, not a "
            "distribution site; constrain the addresses inside it instead."
        )
