"""Staging: how ppl compiles what it runs, and how errors found while it runs come back.

ppl compiles (``jax.jit``) every top-level call exactly once per *argument structure*: Python ints,
bools, strings and other non-array arguments are static (part of the program, Python control
flow may depend on them), arrays and floats are data (new values reuse the program). Inside a
compiled program, GFI calls are traced inline: one program per top-level call, never a nested
compiled program per GFI call.

The public pieces:

- :func:`staged`: compile an algorithm (a function that calls GFI methods) once per argument
  structure, with model-argument packing, the debug flag and ambient contexts (e.g. a device mesh)
  in the compilation key, and run-time check failures raised as the ppl error.
- :func:`stage_gfi_call`: how a top-level GFI call (``gf.simulate(...)`` etc.) is compiled.
- :func:`is_top_level`: whether a GFI call made now would be compiled as its own program.
- :func:`inline`: trace GFI calls in a block inline (for code that is already being compiled).
- :func:`debug` / :func:`debug_enabled`: debug mode (run-time checks of traced values).
- :func:`raise_from_callback`, :func:`pop_callback_error`, :func:`callback_errors`: a
  :class:`~ppl.errors.ModelError` raised inside a host callback of a compiled program comes back
  as itself, not as XLA's ``JaxRuntimeError``.
- :func:`defer_value_check`: checks of values given in choice maps, run on the concrete values
  after the compiled call.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model(mu, n):
    ...     return ppl.normal(jnp.full(n, mu), 1.0) @ "x"
    >>> @staged(static_argnames=("model",), packed_argnames=("args",))
    ... def mean_score(key, *, model, args):
    ...     keys = jax.random.split(key, 8)  # the GFI calls below are traced inline
    ...     return jnp.mean(jax.vmap(lambda k: model.simulate(k, *args).score)(keys))
    >>> s = mean_score(jax.random.key(0), model=model, args=(0.0, 3))  # n=3: static
    >>> bool(jnp.isfinite(s))
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import inspect
import logging
import threading

import jax
import numpy as np

from .arguments import is_data, pack_args, unpack_args
from .errors import ModelError
from .lru import LRUCache
from .state import STATE, current_path

__all__ = [
    "staged",
    "StagedFunction",
    "stage_gfi_call",
    "is_top_level",
    "inline",
    "debug",
    "debug_enabled",
    "raise_from_callback",
    "pop_callback_error",
    "callback_errors",
    "defer_value_check",
    "buffered_map",
    "gc_paused",
]


# ------------------------------------------------------------------------------ debug mode
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

    Examples:
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


def debug_enabled() -> bool:
    """Whether debug-mode run-time checks are traced into the program being built now (inside a
    compiled program: the mode it was compiled with).

    Examples:
        >>> with debug():
        ...     debug_enabled()
        True
        >>> debug_enabled()
        False
    """
    return bool(STATE.debug)


# ------------------------------------------------------------------------------ callback errors
_CALLBACK_ERRORS: list = []
_CALLBACK_LOCK = threading.Lock()


def raise_from_callback(err: ModelError):
    """Raise ``err`` inside a host callback (debug mode), remembering it so that the staged call
    that ran the callback re-raises the same :class:`ModelError` instead of XLA's runtime error.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from ppl.errors import ParameterError
        >>> def check(x):
        ...     if x < 0:
        ...         raise_from_callback(ParameterError(f"x must be >= 0, got {x}"))
        >>> f = jax.jit(lambda x: (jax.debug.callback(check, x), x)[1])
        >>> try:
        ...     with callback_errors():
        ...         jax.block_until_ready(f(jnp.array(-1.0)))
        ... except ParameterError as e:
        ...     print(e)
        x must be >= 0, got -1.0
    """
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
    """The first error recorded by :func:`raise_from_callback` since the last pop, or None; clears
    the record.

    Examples:
        >>> pop_callback_error() is None
        True
    """
    with _CALLBACK_LOCK:
        err = _CALLBACK_ERRORS[0] if _CALLBACK_ERRORS else None
        _CALLBACK_ERRORS.clear()
    return err


@contextlib.contextmanager
def callback_errors():
    """Run a compiled call so that a failed run-time check raises the ppl error itself.

    A stale error (left by an earlier failure under the user's own ``jax.jit``) is dropped on
    entry; a ``JaxRuntimeError`` leaving the block is replaced by the :class:`ModelError` that
    :func:`raise_from_callback` recorded, if any (chained ``from`` the runtime error).
    See :func:`raise_from_callback` for an example.
    """
    if _CALLBACK_ERRORS:  # stale, from a failed call under the user's own jit
        pop_callback_error()
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        err = pop_callback_error()
        if err is not None:  # a debug-mode check failed at run time: raise the ppl error itself
            raise err from e
        raise


# ------------------------------------------------------------------------------ inline tracing
def is_top_level() -> bool:
    """True where a GFI call made now is a top-level call, compiled (once per argument structure)
    as its own program; False inside a model, inside a staged function or :func:`inline` block,
    and while an interceptor is active (the call is then traced into the enclosing program).

    Examples:
        >>> is_top_level()
        True
        >>> with inline():
        ...     is_top_level()
        False
    """
    return STATE.stage_depth == 0 and not STATE.handlers and not STATE.interceptors


_stage_enabled = is_top_level


@contextlib.contextmanager
def inline(debug: bool | None = None):
    """Trace the GFI calls made in the block inline into the program being traced (no compiled
    program of their own). Use it in code that is itself being compiled, e.g. the body of a
    ``jax.jit``-ed inference step, so that GFI calls do not each become a nested compiled call.
    ``debug`` (if given) sets the debug mode for the block, e.g. the one the enclosing program is
    compiled with.

    Examples:
        >>> import jax, ppl
        >>> @jax.jit
        ... def draw(key):
        ...     with inline():
        ...         return ppl.normal.simulate(key, 0.0, 1.0).score
        >>> draw(jax.random.key(0)).shape
        ()
    """
    STATE.stage_depth += 1
    old_debug = STATE.debug
    if debug is not None:
        STATE.debug = debug
    try:
        yield
    finally:
        STATE.stage_depth -= 1
        STATE.debug = old_debug


# ------------------------------------------------------------------------------ GFI calls
# number of leading "data" arguments (before the model's own args) of each GFI method
_N_DATA = {"simulate": 1, "assess": 1, "generate": 2, "update": 3, "regenerate": 3}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _staged_runner(gf, method, treedef, static_spec, debug_flag, dyn_leaves):
    it = iter(dyn_leaves)
    leaves = []
    for s in static_spec:
        leaves.append(next(it) if s is _DYN else leaves[s.index] if isinstance(s, _SameAs) else s.value)
    data_part, model_part = jax.tree_util.tree_unflatten(treedef, leaves)
    all_args = tuple(data_part) + tuple(model_part)
    with inline(debug=debug_flag):
        return getattr(gf, "_" + method)(*all_args)


class _DynMarker:
    def __repr__(self):
        return "<dyn>"


_DYN = _DynMarker()


_EDITS = ("update", "regenerate")


@dataclasses.dataclass(frozen=True)
class _SameAs:
    index: int  # the leaf is the same object as this earlier leaf


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
#: The value checks of each compiled GFI program, by compilation key (the most recently used
#: 4096 programs; a program whose checks were dropped records them again when it is retraced,
#: and jax.jit retraces only on a cache miss, so keep this at least as large as a session's
#: number of distinct top-level programs).
_VALUE_CHECKS = LRUCache(4096)
_CONSTRAINT_POS = {"assess": 0, "generate": 1, "update": 2}


def defer_value_check(check, message: str):
    """Register ``check(value, present) -> bool`` for the value given at the current address, to
    run on the concrete value after the enclosing top-level GFI call (no-op elsewhere); a failed
    check raises :class:`~ppl.errors.ShapeError` with ``message`` and the offending values.

    Distribution sites call it while a top-level call is traced (a given value is a tracer then).

    Examples:
        >>> defer_value_check(lambda v, present: True, "never fails")  # outside a call: no-op
    """
    rec = _VALUE_CHECK_STATE.recording
    if rec is not None:
        rec.append((current_path(), check, message))


def _run_value_checks(checks, constraints):
    from .choicemap import Masked
    from .errors import ShapeError

    for path, check, message in checks:
        v = constraints.get_submap(path).raw_value()
        if v is None:
            continue
        flag = True
        if isinstance(v, Masked):
            v, flag = v.value, v.flag
        if isinstance(v, jax.core.Tracer) or isinstance(flag, jax.core.Tracer):
            continue  # inside the user's own jit: only the debug-mode run-time check applies
        if not check(np.asarray(v), np.asarray(flag)):
            raise ShapeError(f"{message} Got {np.asarray(v).ravel()[:5]}.")


def stage_gfi_call(gf, method: str, all_args: tuple):
    """Run ``gf``'s GFI method ``method`` (``"simulate"``, ``"assess"``, ``"generate"``,
    ``"update"``, ``"regenerate"``) on ``all_args`` as a compiled program, compiled once per
    argument structure and debug mode; then run the deferred value checks of the given choices.

    The method's leading arguments (key, choices, trace, selection) are always data; of the
    model's own arguments, arrays and floats are data and everything else static. This is what
    ``gf.simulate(key, *args)`` etc. do at top level (see :func:`is_top_level`).

    Examples:
        >>> import jax, ppl
        >>> tr = stage_gfi_call(ppl.normal, "simulate", (jax.random.key(0), 0.0, 1.0))
        >>> tr.choices[()].shape
        ()
    """
    n_data = _N_DATA[method]
    data_part, model_part = all_args[:n_data], all_args[n_data:]
    leaves, treedef = jax.tree_util.tree_flatten((data_part, model_part))
    n_data_leaves = len(jax.tree_util.tree_leaves(data_part))
    spec, dyn = [], []
    # update/regenerate: a model argument that is the old trace's own (``*trace.args``) is passed as
    # that same traced value, so the call can tell it did not change (ppl.changes)
    firsts = {id(x): i for i, x in enumerate(leaves[:n_data_leaves])} if method in _EDITS else {}
    for i, leaf in enumerate(leaves):
        if i >= n_data_leaves and id(leaf) in firsts and is_data(leaf):
            spec.append(_SameAs(firsts[id(leaf)]))
        elif i < n_data_leaves or is_data(leaf):
            spec.append(_DYN)
            dyn.append(leaf)
        else:
            spec.append(_HashableStatic(leaf))
    spec = tuple(spec)
    checks_key = (gf, method, treedef, spec, STATE.debug)
    recorded: list = []
    old_recording = _VALUE_CHECK_STATE.recording
    _VALUE_CHECK_STATE.recording = recorded if method in _CONSTRAINT_POS else None
    try:
        with callback_errors(), gc_paused():
            out = _staged_runner(gf, method, treedef, spec, STATE.debug, tuple(dyn))
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
        known = _VALUE_CHECKS.setdefault(checks_key, [])
        known.extend(c for c in recorded if all(c[0] != k[0] or c[2] != k[2] for k in known))
    checks = _VALUE_CHECKS.get(checks_key) if _VALUE_CHECKS else None
    if checks:
        _run_value_checks(checks, all_args[_CONSTRAINT_POS[method]])
    return out


_staged_call = stage_gfi_call


# ------------------------------------------------------------------------------ staged algorithms
class StagedFunction:
    """A function compiled by :func:`staged`; call it like the original. ``jitted`` is the
    underlying ``jax.jit`` object (for ``_cache_size()`` and the like)."""

    def __init__(self, fn, static_argnames=(), packed_argnames=(), contexts=()):
        self.fn = fn
        self.static_argnames = tuple(static_argnames)
        self.packed_argnames = tuple(packed_argnames)
        self.contexts = tuple(contexts)
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            params = ()
        self._positional = []  # names that may be given by position, in order
        for p in params:
            if p.kind is p.VAR_POSITIONAL:
                break
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self._positional.append(p.name)
        packed, contexts = self.packed_argnames, self.contexts

        def traced(*a, _ppl_context, **kw):
            debug_flag, values = _ppl_context
            with inline(debug=debug_flag):  # GFI calls inside trace inline (no nested jit per call)
                for name in packed:
                    if name in kw:
                        kw[name] = unpack_args(kw[name])
                with contextlib.ExitStack() as stack:
                    for (_, enter), value in zip(contexts, values):
                        stack.enter_context(enter(value))
                    return fn(*a, **kw)

        self.jitted = jax.jit(traced, static_argnames=self.static_argnames + ("_ppl_context",))
        functools.update_wrapper(self, fn)

    def _keywords(self, a, kw):
        """Static and packed arguments given by position move to keywords (jit keys them by name)."""
        named = set(self.static_argnames) | set(self.packed_argnames)
        pos = self._positional[: len(a)]
        first = next((i for i, name in enumerate(pos) if name in named), None)
        if first is None:
            return a, kw
        kw = dict(kw)
        for name, value in zip(pos[first:], a[first:]):
            if name in kw:
                raise TypeError(f"{getattr(self.fn, '__name__', 'function')}() got multiple values for argument {name!r}")
            kw[name] = value
        return a[:first], kw

    def __call__(self, *a, **kw):
        a, kw = self._keywords(a, kw)
        for name in self.packed_argnames:
            if name in kw:
                kw[name] = pack_args(tuple(kw[name]) if isinstance(kw[name], list) else kw[name])
        context = (bool(STATE.debug), tuple(current() for current, _ in self.contexts))
        with callback_errors(), gc_paused():
            return self.jitted(*a, _ppl_context=context, **kw)


def staged(fn=None, *, static_argnames=(), packed_argnames=(), contexts=()):
    """Compile ``fn`` (an inference algorithm) with ``jax.jit``, once per argument structure.

    - ``static_argnames``: arguments that are part of the program (models, counts, options).
    - ``packed_argnames``: model-argument tuples; their non-array leaves (Python ints, bools,
      strings) are static, their arrays and floats data, as in the GFI's own staging.
    - ``contexts``: pairs ``(current, enter)`` of ambient settings: ``current()`` (hashable) is
      read at every call and keys the compilation, ``enter(value)`` is a context manager entered
      while ``fn`` is traced (e.g. ``(inference.sharding.active_mesh,
      inference.sharding.batch_sharding)``).

    The debug mode active at the call is part of the compilation key too; GFI calls inside
    ``fn`` are traced inline (one program, no nested compiled call per GFI call); a debug-mode
    check that fails at run time raises the ppl error (see :func:`callback_errors`). Static and
    packed arguments may be given by position or keyword.

    Usable as ``@staged(static_argnames=...)`` or ``staged(fn, static_argnames=...)``; returns
    a :class:`StagedFunction`.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @staged(static_argnames=("n",))
        ... def draws(key, n):
        ...     return jax.vmap(lambda k: ppl.normal.simulate(k, 0.0, 1.0).retval)(jax.random.split(key, n))
        >>> draws(jax.random.key(0), 5).shape
        (5,)
        >>> _ = draws(jax.random.key(1), 5); draws.jitted._cache_size()  # same structure: one program
        1
    """
    if fn is None:
        return lambda f: StagedFunction(f, static_argnames, packed_argnames, contexts)
    return StagedFunction(fn, static_argnames, packed_argnames, contexts)


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector paused for the block (restored after; nothing is done if
    it is already off). ppl wraps its calls of compiled programs in it: a first call traces the
    model and lowers it, allocating some 10^5 short-lived objects, and each collection pass the
    allocations trigger walks all of the process's objects (JAX's included): 10-15% of the
    tracing time of a 31-site model. Objects are still freed by reference counting; cycles made
    during the block are collected afterwards.

    Examples:
        >>> import gc
        >>> with gc_paused():
        ...     paused = not gc.isenabled()
        >>> paused, gc.isenabled()
        (True, True)
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# ------------------------------------------------------------------------------ compiled layout
def buffered_map(f, xs):
    """``jax.vmap(f)(xs)``, the same values, computed into a buffer that XLA does not fuse into
    its consumers: a loop of two iterations, each vectorized over half of ``xs``'s leading axis.

    Many sites each reading their own slice of one vectorized result (the standard normal noise
    of a model's sites, drawn together) would otherwise each get a copy of the whole vectorized
    computation: XLA fuses a cheap-looking elementwise producer into every consumer, so a
    100-site model's ``simulate`` compiled to 23,742 HLO instructions (3,057 with the buffer) and
    took 4.5 s to compile (2.6 s). Two iterations, not one: a loop of one is inlined again.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> keys = jax.random.split(jax.random.key(0), 5)
        >>> z = buffered_map(lambda k: jax.random.normal(k, ()), keys)
        >>> bool(jnp.all(z == jax.vmap(lambda k: jax.random.normal(k, ()))(keys)))
        True
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    half = -(-n // 2)

    def halves(x):
        x = jax.numpy.asarray(x)
        if 2 * half != n:  # one extra (discarded) entry makes two equal halves
            x = jax.numpy.concatenate([x, x[:1]])
        return x.reshape((2, half) + x.shape[1:])

    out = jax.lax.map(jax.vmap(f), jax.tree_util.tree_map(halves, xs))
    return jax.tree_util.tree_map(lambda o: o.reshape((2 * half,) + o.shape[2:])[:n], out)
