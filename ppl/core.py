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

Example:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def model(mu):
    ...     return ppl.normal(mu, 1.0) @ "x"
    >>> tr = model.simulate(jax.random.key(0), 0.5)
    >>> logp, _ = model.assess(tr.choices, 0.5)
    >>> bool(abs(logp - tr.score) < 1e-6)
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from . import keys
from .choicemap import ChoiceMap, Selection
from .errors import AddressError, ModelError, fmt_addr

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


# ------------------------------------------------------------------------------ global state
class _State(threading.local):
    def __init__(self):
        self.path: list[str] = []  # address path of the site being traced
        self.handlers: list = []  # active @gen handlers (innermost last)
        self.stage_depth = 0  # > 0 while inside a staged (jitted) GFI call
        self.interceptors: list = []
        self.debug = False
        self.gfi_depth = 0  # nesting depth of GFI calls while an interceptor is active
        self.branch_depth = 0  # > 0 while tracing the branches of a ppl.cond/switch/mix


STATE = _State()


def current_path() -> tuple:
    """The full address path of the site being traced (empty outside models)."""
    return tuple(STATE.path)


@contextlib.contextmanager
def push_path(addr: str):
    STATE.path.append(addr)
    try:
        yield
    finally:
        STATE.path.pop()


@contextlib.contextmanager
def debug(enabled: bool = True):
    """Debug mode: check distribution parameters and finiteness of every site's log density.

    Parameter checks on concrete (constant) values always run at trace time; debug mode adds
    run-time checks of traced values, reporting the address of the first bad site. Functions
    already compiled by the user's own ``jax.jit`` keep the mode they were compiled with.

    A run-time check that fails inside the user's own ``jax.jit`` surfaces from XLA as a
    ``JaxRuntimeError`` with the ppl message at the end of a long callback traceback; when that
    error reaches the end of the ``with ppl.debug():`` block, the block raises the ppl error itself
    (e.g. :class:`~ppl.errors.ParameterError`) instead. Keep the jitted call (and
    ``block_until_ready``) inside the block to get it.

    Example:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model(s):
        ...     return ppl.normal(0.0, s) @ "x"
        >>> with ppl.debug():
        ...     try:
        ...         model.simulate(jax.random.key(0), -1.0)
        ...     except Exception as e:
        ...         print("'x'" in str(e))
        True
    """
    old = STATE.debug
    STATE.debug = enabled
    try:
        yield
    except jax.errors.JaxRuntimeError:
        err = pop_callback_error()
        if err is not None:  # a debug-mode check failed inside the user's own jit
            raise err.with_traceback(None) from None
        raise
    finally:
        STATE.debug = old


# ------------------------------------------------------------------------------ interceptors
class Interceptor:
    """Hook into distribution sites during any GFI method (used by inference code).

    ``sample`` replaces drawing a fresh value; ``observe`` maps a given (constrained) value to the
    value stored in the trace plus an extra log-weight term and the value to report in ``update``'s
    discard. Subclasses override ``handles(path)`` to pick sites. Interceptors are active for the
    duration of a ``with ppl.core.intercept(obj):`` block, during tracing.

    Example:
        >>> import jax, ppl
        >>> class Zero(Interceptor):
        ...     def sample(self, path, gf, d, key):
        ...         return jax.numpy.zeros(d.shape())
        >>> with intercept(Zero()):
        ...     tr = ppl.normal.simulate(jax.random.key(0), 3.0, 1.0)
        >>> float(tr.retval)
        0.0
    """

    #: If True, ``observe`` receives given values before the site's shape/dtype check (e.g. an
    #: unconstrained vector of another shape) and the value it returns is checked instead.
    raw_values = False

    def handles(self, path: tuple) -> bool:
        return True

    def sample(self, path, gf, d, key):
        return gf.draw(d, key)

    def observe(self, path, gf, d, value, old_value):
        """Return ``(value_for_trace, extra_log_weight, discard_value)``."""
        return value, 0.0, old_value

    def returned(self, gf, method, out):
        """Called with the result of every outermost GFI call made while the interceptor is active
        (e.g. ``guide.simulate(...)`` in a program); returns the result to hand back."""
        return out


@contextlib.contextmanager
def intercept(interceptor: Interceptor):
    """Activate an :class:`Interceptor` while tracing the enclosed GFI calls."""
    STATE.interceptors.append(interceptor)
    try:
        yield interceptor
    finally:
        STATE.interceptors.pop()


def active_interceptor(path: tuple):
    for icpt in reversed(STATE.interceptors):
        if icpt.handles(path):
            return icpt
    return None


# ------------------------------------------------------------------------------ static args
@jax.tree_util.register_pytree_node_class
class Static:
    """A non-array value carried as static pytree structure (no leaves)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def tree_flatten(self):
        return (), self.value

    @classmethod
    def tree_unflatten(cls, aux, _):
        return cls(aux)

    def __repr__(self):
        return f"Static({self.value!r})"


def is_data(x) -> bool:
    """Arrays, tracers, numpy values and Python floats are data; everything else is static."""
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, complex, jax.core.Tracer))


def pack_args(args):
    return jax.tree_util.tree_map(lambda x: x if is_data(x) else Static(x), args)


def unpack_args(args):
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, Static) else x, args, is_leaf=lambda x: isinstance(x, Static)
    )


# ------------------------------------------------------------------------------ traces
class Trace:
    """Base class of traces: ``gf``, ``args``, ``retval``, ``score`` and ``choices``.

    Traces nested inside another trace are stored without their ``args`` and ``retval`` (the parent
    re-executes its children when it needs them), so compiled programs carry only choices and
    scores.
    """

    def get_choices(self) -> ChoiceMap:
        raise NotImplementedError

    def get_scores(self) -> ChoiceMap:
        """Per-site log densities, as a :class:`ChoiceMap` with the structure of ``choices``.

        Each leaf is the log density of the choice at that address given its parents in this
        trace (summed over the site's own batch dimensions; combinators' copy and time axes stay
        as leading axes). Conditionally present sites (untaken branches) are ``Masked``.

        Example:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def m():
            ...     x = ppl.normal(0.0, 1.0) @ "x"
            ...     return ppl.normal(x, 1.0) @ "y"
            >>> tr = m.simulate(jax.random.key(0))
            >>> bool(abs(tr.get_scores()["x"] + tr.get_scores()["y"] - tr.score) < 1e-5)
            True
        """
        raise NotImplementedError

    def project(self, selection: Selection):
        """The log density of the selected choices: the sum of :meth:`get_scores` over them.

        Example:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def m():
            ...     x = ppl.normal(0.0, 1.0) @ "x"
            ...     return ppl.normal(x, 1.0) @ "y"
            >>> tr = m.simulate(jax.random.key(0))
            >>> bool(abs(tr.project(ppl.select("x")) - tr.get_scores()["x"]) < 1e-6)
            True
        """
        return masked_total(self.get_scores().filter(selection).leaves())

    @property
    def choices(self) -> ChoiceMap:
        return self.get_choices()

    @property
    def args(self):
        return unpack_args(self.packed_args)

    def get_subtrace(self, addr):
        raise AddressError(f"{type(self).__name__} has no subtrace at {fmt_addr(addr)}")

    # -- the trace protocol: what inference code may ask of any trace ---------------------------
    def get_gen_fn(self):
        """The generative function that produced this trace.

        Example:
            >>> import jax, ppl
            >>> ppl.normal.simulate(jax.random.key(0), 0.0, 1.0).get_gen_fn() is ppl.normal
            True
        """
        return self.gf

    def get_args(self):
        """The model arguments of the call, as a tuple (``None`` for a trace stored inside another
        trace: nested traces are kept without their arguments).

        Example:
            >>> import jax, ppl
            >>> [float(a) for a in ppl.normal.simulate(jax.random.key(0), 0.0, 2.0).get_args()]
            [0.0, 2.0]
        """
        return self.args

    def get_retval(self):
        """The return value of the call (``None`` for a nested ``@gen`` trace, see :meth:`get_args`).

        Example:
            >>> import jax, ppl
            >>> tr = ppl.normal.simulate(jax.random.key(0), 0.0, 1.0)
            >>> bool(tr.get_retval() == tr.choices[()])
            True
        """
        return self.retval

    def get_score(self):
        """``log p(choices; args)``: the joint log density of all choices of this trace.

        Example:
            >>> import jax, ppl
            >>> tr = ppl.normal.simulate(jax.random.key(0), 0.0, 1.0)
            >>> bool(tr.get_score() == tr.score)
            True
        """
        return self.score

    def site_score(self, path):
        """The summed log density of the site at ``path`` (an address or a tuple of addresses),
        over all its copies (combinators' copy and time axes are summed; a site in an untaken
        branch counts 0). A path naming a sub-model sums every site below it. ``None`` when the
        trace has no site at ``path``.

        Example:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def m():
            ...     x = ppl.normal(0.0, 1.0) @ "x"
            ...     return ppl.normal.repeat(3)(x, 1.0) @ "ys"
            >>> tr = m.simulate(jax.random.key(0))
            >>> bool(abs(tr.site_score("ys") - tr.get_scores()["ys"].sum()) < 1e-5)
            True
            >>> tr.site_score("zz") is None
            True
        """
        from .choicemap import normalize_addr

        path = () if path == () else normalize_addr(path)
        sub = self.get_scores().get_submap(path)
        if sub.is_empty():
            return None
        return masked_total([(path + p, v) for p, v in sub.leaves()])

    def batch_axes(self, axis=0):
        """A pytree prefix of this trace for ``jax.vmap``'s ``in_axes``/``out_axes``: ``axis`` for the
        per-trace data (choices, scores, return value), ``None`` for the model's arguments, which
        a batch of traces (chains, particles) shares.

        Example:
            >>> import jax, jax.numpy as jnp, ppl
            >>> @ppl.gen
            ... def m(mu):
            ...     return ppl.normal(mu, 1.0) @ "x"
            >>> tr = m.simulate(jax.random.key(0), jnp.array(0.5))
            >>> batch = jax.vmap(lambda k: m.simulate(k, jnp.array(0.5)), out_axes=tr.batch_axes(0))(
            ...     jax.random.split(jax.random.key(1), 4))
            >>> batch.choices["x"].shape, batch.get_args()[0].shape
            ((4,), ())
        """
        if not dataclasses.is_dataclass(self):
            return axis
        fields = {f.name: (None if f.name == "packed_args" else axis)
                  for f in dataclasses.fields(self) if f.name != "gf"}
        return dataclasses.replace(self, **fields)

    def select(self, pred, other):
        """This trace where the scalar bool ``pred`` holds, else ``other`` (elementwise ``where`` over
        the per-trace data), keeping ``other``'s model arguments: an MH accept/reject step that
        leaves the shared arguments as they are. Both traces must have the same structure.

        Example:
            >>> import jax, jax.numpy as jnp, ppl
            >>> @ppl.gen
            ... def m():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> a, b = m.simulate(jax.random.key(0)), m.simulate(jax.random.key(1))
            >>> bool(a.select(jnp.array(False), b).choices["x"] == b.choices["x"])
            True
        """
        if dataclasses.is_dataclass(self) and isinstance(other, Trace) and dataclasses.is_dataclass(other):
            fields = {f.name: tree_select(pred, getattr(self, f.name), getattr(other, f.name))
                      for f in dataclasses.fields(self) if f.name not in ("gf", "packed_args")}
            return dataclasses.replace(other, **fields)
        return tree_select(pred, self, other)

    def strip(self):
        return dataclasses.replace(self, packed_args=None, retval=None)

    def __repr__(self):
        name = getattr(self.gf, "name", type(self.gf).__name__)
        score = self.score
        if isinstance(score, jax.core.Tracer):
            s = f"<traced {jnp.dtype(score.dtype).name}{list(score.shape)}>"
        elif np.ndim(score) == 0:
            s = f"{float(score):.4f}"
        else:  # a batch of traces (vmapped)
            s = f"{jnp.result_type(score).name}{list(np.shape(score))}"
        body = repr(self.choices).split("\n", 1)
        tree = body[1] if len(body) > 1 else "(no choices)"
        return f"Trace of {name} (score={s})\n{tree}"


def trace_dataclass(cls):
    """Register a trace dataclass as a pytree; ``gf`` is static, other fields are data."""
    cls = dataclasses.dataclass(cls, repr=False, eq=False)
    fields = [f.name for f in dataclasses.fields(cls)]
    data = [f for f in fields if f != "gf"]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=["gf"])
    return cls


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
    return zlib.crc32(addr.encode()) & 0x7FFFFFFF


def site_key(key, addr: str):
    """The key of the site at ``addr``: independent of visiting order, stable across methods."""
    if isinstance(key, keys.KeyTable):
        k = key.table.get(addr)
        if k is not None:  # precomputed outside a loop (bit-identical to the fold_in below)
            return k
        key = key.raw
    return keys.fold_in(key, address_hash(addr))


def as_choicemap(x, what: str = "choices") -> ChoiceMap:
    """``x`` as a :class:`ChoiceMap`: ``None`` is empty, a dict is converted, Python lists of numbers
    become arrays; anything else is a ``TypeError`` naming ``what``.

    Example:
        >>> as_choicemap({"y": [1.0, 2.0]})["y"].shape
        (2,)
    """
    if x is None:
        return ChoiceMap.empty()
    if isinstance(x, dict):
        x = ChoiceMap(x)
    if isinstance(x, ChoiceMap):
        return _lists_to_arrays(x, what)
    raise TypeError(f"{what} must be a ppl.ChoiceMap (or a dict of address -> value), got {type(x).__name__}")


_as_choicemap = as_choicemap


def _lists_to_arrays(chm: ChoiceMap, what: str) -> ChoiceMap:
    """Python lists/tuples of numbers given as values become arrays (they would otherwise be
    pytrees of separate scalars); anything else that is not rectangular raises a ShapeError."""
    from .choicemap import Masked
    from .errors import ShapeError

    def is_seq(v):
        return isinstance(v, (list, tuple))

    leaves = chm.leaves()
    if not any(is_seq(v.value if isinstance(v, Masked) else v) or (isinstance(v, Masked) and is_seq(v.flag))
               for _, v in leaves):
        return chm

    def arr(v, path):
        if not is_seq(v):
            return v
        try:
            return jnp.asarray(v)
        except (TypeError, ValueError) as e:
            raise ShapeError(
                f"{what}: the value at address {fmt_addr(path)} is a Python {type(v).__name__} that is "
                f"not a rectangular list of numbers ({e}); pass an array, e.g. jnp.array(...)."
            ) from e

    for path, v in leaves:
        if isinstance(v, Masked):
            new = Masked(arr(v.value, path), arr(v.flag, path))
        else:
            new = arr(v, path)
        if new is not v:
            chm = chm.set(path, new) if path else ChoiceMap.value(new)
    return chm


def as_args_tuple(args, where: str, name: str = "args") -> tuple:
    """``args`` as a tuple of model arguments, or an :class:`~ppl.errors.ArgumentError` naming
    ``name`` and ``where`` (a list is accepted; a single bare value is the common slip).

    Example:
        >>> as_args_tuple([1.0, 2], "importance.sample")
        (1.0, 2)
        >>> try:
        ...     as_args_tuple(3, "importance.sample")
        ... except ModelError as e:
        ...     print(str(e).split(";")[0])
        importance.sample: args must be a tuple of the model's arguments, got int 3
    """
    if isinstance(args, tuple):
        return args
    if isinstance(args, list):
        return tuple(args)
    from .errors import ArgumentError

    if isinstance(args, (dict, ChoiceMap)):
        shown = "(looks like observations: pass the model arguments first, then the observations)"
    elif isinstance(args, (jax.Array, np.ndarray)) and np.ndim(args) > 0:
        shown = f"of shape {np.shape(args)}"
    else:
        shown = repr(args)[:80]
    raise ArgumentError(
        f"{where}: {name} must be a tuple of the model's arguments, got {type(args).__name__} {shown}; "
        f"write (x,) for one argument, () for none."
    )


def _check_key(key, method):
    if keys.is_key(key):
        return key
    raise TypeError(
        f"{method}: the first argument must be a jax.random key (jax.random.key(0)), got {type(key).__name__}"
    )


# number of leading "data" arguments (before the model's own args) of each GFI method
_N_DATA = {"simulate": 1, "assess": 1, "generate": 2, "update": 3, "regenerate": 3}


def _stage_enabled() -> bool:
    return STATE.stage_depth == 0 and not STATE.handlers and not STATE.interceptors


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _staged_runner(gf, method, treedef, static_spec, debug_flag, dyn_leaves):
    leaves = list(static_spec)
    it = iter(dyn_leaves)
    leaves = [next(it) if s is _DYN else s.value for s in leaves]
    data_part, model_part = jax.tree_util.tree_unflatten(treedef, leaves)
    all_args = tuple(data_part) + tuple(model_part)
    STATE.stage_depth += 1
    old_debug = STATE.debug
    STATE.debug = debug_flag
    try:
        return getattr(gf, "_" + method)(*all_args)
    finally:
        STATE.stage_depth -= 1
        STATE.debug = old_debug


_CALLBACK_ERRORS: list = []
_CALLBACK_LOCK = threading.Lock()


def raise_from_callback(err: ModelError):
    """Raise ``err`` inside a host callback (debug mode), remembering it so that the staged call
    that ran the callback re-raises the same :class:`ModelError` instead of XLA's runtime error."""
    with _CALLBACK_LOCK:
        _CALLBACK_ERRORS.append(err)
    raise err


class _QuietModelErrors(logging.Filter):
    """Keep JAX from logging a traceback for ppl's own debug-mode errors (they are re-raised)."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ModelError)


logging.getLogger("jax._src.debugging").addFilter(_QuietModelErrors())


def pop_callback_error():
    with _CALLBACK_LOCK:
        err = _CALLBACK_ERRORS[0] if _CALLBACK_ERRORS else None
        _CALLBACK_ERRORS.clear()
    return err


class _DynMarker:
    def __repr__(self):
        return "<dyn>"


_DYN = _DynMarker()


class _HashableStatic:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        try:
            return hash(self.value)
        except TypeError:
            return id(self.value)

    def __eq__(self, other):
        if not isinstance(other, _HashableStatic):
            return False
        try:
            return bool(self.value == other.value) and type(self.value) is type(other.value)
        except Exception:
            return self.value is other.value


# ----------------------------------------------------------------- given-value checks
# A value given in a choice map is data of the staged program (a tracer while it is traced), so a
# check of the value itself (e.g. integral values at a discrete site) cannot run at trace time.
# Distribution sites register such checks with ``defer_value_check`` while a top-level GFI call
# is traced; they are kept with the call's compilation key and run on the concrete choice map
# after every call with that key (cheap host checks, only at the registered addresses).
class _ValueChecks(threading.local):
    def __init__(self):
        self.recording = None  # list while a top-level staged call is being traced


_VALUE_CHECK_STATE = _ValueChecks()
_VALUE_CHECKS: dict = {}
_CONSTRAINT_POS = {"assess": 0, "generate": 1, "update": 2}


def defer_value_check(check, message: str):
    """Register ``check(value) -> bool`` for the given value at the current address, to run on
    the concrete value after the enclosing top-level GFI call (no-op elsewhere)."""
    rec = _VALUE_CHECK_STATE.recording
    if rec is not None:
        rec.append((current_path(), check, message))


def _run_value_checks(checks, constraints):
    for path, check, message in checks:
        v = constraints.get_submap(path).raw_value()
        if v is None:
            continue
        from .choicemap import Masked

        flag = True
        if isinstance(v, Masked):
            v, flag = v.value, v.flag
        if isinstance(v, jax.core.Tracer) or isinstance(flag, jax.core.Tracer):
            continue  # inside the user's own jit: only the debug-mode run-time check applies
        if not check(np.asarray(v), np.asarray(flag)):
            from .errors import ShapeError

            raise ShapeError(f"{message} Got {np.asarray(v).ravel()[:5]}.")


def _staged_call(gf, method: str, all_args: tuple):
    n_data = _N_DATA[method]
    data_part, model_part = all_args[:n_data], all_args[n_data:]
    leaves, treedef = jax.tree_util.tree_flatten((data_part, model_part))
    n_data_leaves = len(jax.tree_util.tree_leaves(data_part))
    spec, dyn = [], []
    for i, leaf in enumerate(leaves):
        if i < n_data_leaves or is_data(leaf):
            spec.append(_DYN)
            dyn.append(leaf)
        else:
            spec.append(_HashableStatic(leaf))
    if _CALLBACK_ERRORS:  # stale, from a failed call under the user's own jit
        pop_callback_error()
    spec = tuple(spec)
    checks_key = (gf, method, treedef, spec, STATE.debug)
    recorded: list = []
    old_recording = _VALUE_CHECK_STATE.recording
    _VALUE_CHECK_STATE.recording = recorded if method in _CONSTRAINT_POS else None
    try:
        out = _staged_runner(gf, method, treedef, spec, STATE.debug, tuple(dyn))
    except jax.errors.JaxRuntimeError as e:
        err = pop_callback_error()
        if err is not None:  # a debug-mode check failed at run time: raise the ppl error itself
            raise err from e
        raise
    except TypeError as e:
        if "non-hashable static" in str(e) or "unhashable" in str(e):
            raise ModelError(
                f"{gf.name}.{method}: a non-array argument is not hashable ({e}); pass arrays for "
                "data and hashable Python values (ints, strings, tuples) for static arguments."
            ) from e
        raise
    finally:
        _VALUE_CHECK_STATE.recording = old_recording
    if recorded:  # traced just now: keep this program's checks (the union over its retraces)
        if len(_VALUE_CHECKS) > 4096:
            _VALUE_CHECKS.clear()
        known = _VALUE_CHECKS.setdefault(checks_key, [])
        known.extend(c for c in recorded if all(c[0] != k[0] or c[2] != k[2] for k in known))
    checks = _VALUE_CHECKS.get(checks_key) if _VALUE_CHECKS else None
    if checks:
        _run_value_checks(checks, all_args[_CONSTRAINT_POS[method]])
    return out


class GenerativeFunction:
    """Base class of everything that can be traced at an address with ``gf(*args) @ "addr"``.

    Subclasses implement ``_simulate``, ``_assess``, ``_generate``, ``_update``, ``_regenerate``;
    the public methods validate inputs and stage (jit) top-level calls.

    Example:
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
            return _staged_call(self, method, all_args)
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

        Example:
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
_SELECTION_OK: dict = {}  # (trace structure, selection) pairs already checked


def _selection_paths(sel, out: list) -> list:
    """Every explicit address path named in a selection (through ``|``, ``&`` and ``~``)."""
    from . import choicemap as cm

    if isinstance(sel, cm._AddrSel):
        out.extend(sel.paths)
    elif isinstance(sel, (cm._UnionSel, cm._InterSel)):
        _selection_paths(sel.a, out)
        _selection_paths(sel.b, out)
    elif isinstance(sel, cm._ComplementSel):
        _selection_paths(sel.inner, out)
    return out


def choice_paths(trace_or_choices):
    """Every address path of a trace's choices (or of a choice map), including the choices of
    branches not taken (``Masked``), as tuples; None if they cannot be listed.

    Example:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> choice_paths(m.simulate(jax.random.key(0)))
        [('x',)]
    """
    try:  # abstractly, so that every branch's (masked) choices are listed, taken or not
        if isinstance(trace_or_choices, ChoiceMap):
            choices = trace_or_choices
        else:
            choices = jax.eval_shape(lambda t: t.get_choices(), trace_or_choices)
        return [p for p, _ in choices.leaves()]
    except Exception:
        return None


def _check_selection_in_trace(where: str, selection, trace):
    """Raise an AddressError if ``selection`` names an address that is not in ``trace`` (choices of
    untaken branches count as present; a prefix of an address selects everything below it)."""
    paths = _selection_paths(selection, [])
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
        if len(_SELECTION_OK) > 4096:
            _SELECTION_OK.clear()
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


def add(a, b):
    """Add log weights, keeping Python 0.0 out of traced programs where possible."""
    if isinstance(a, float) and a == 0.0:
        return b
    if isinstance(b, float) and b == 0.0:
        return a
    return a + b


def zero():
    return jnp.zeros((), dtype=jnp.float32)


def masked_total(leaves, extra_flags=None):
    """Sum of score leaves ``[(path, score_or_Masked)]``; a ``Masked`` leaf counts where present.

    ``extra_flags`` optionally maps a path to one more presence flag (broadcast on the left)."""
    from .choicemap import Masked

    total = 0.0
    for path, v in leaves:
        flag = None
        if isinstance(v, Masked):
            v, flag = v.value, v.flag
        if extra_flags is not None and path in extra_flags:
            f2 = extra_flags[path]
            flag = f2 if flag is None else jnp.logical_and(_prefix_bcast(flag, f2), _prefix_bcast(f2, flag))
        v = jnp.asarray(v)
        if flag is not None:
            flag = jnp.asarray(flag)
            if flag.ndim > v.ndim:
                raise ModelError(
                    f"internal: the presence mask at {fmt_addr(path)} is finer than the site's score; "
                    "partially masked sites cannot be scored separately."
                )
            v = jnp.where(jnp.reshape(flag, flag.shape + (1,) * (v.ndim - flag.ndim)), v, 0.0)
        total = add(total, jnp.sum(v))
    return total if not isinstance(total, float) else zero()


def _prefix_bcast(a, like):
    a, like = jnp.asarray(a), jnp.asarray(like)
    if a.ndim >= like.ndim:
        return a
    return jnp.reshape(a, a.shape + (1,) * (like.ndim - a.ndim))


def tree_select(pred, on_true, on_false):
    """Elementwise ``where`` over two pytrees of identical structure (pred broadcast on the left)."""

    def sel(a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        p = jnp.reshape(pred, jnp.shape(pred) + (1,) * (a.ndim - jnp.ndim(pred)))
        return jnp.where(p, a, b)

    return jax.tree_util.tree_map(sel, on_true, on_false)

