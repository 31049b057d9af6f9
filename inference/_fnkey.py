"""Compile keys for user functions passed to compiled algorithms (``args_fn`` of ``smc.pmmh`` and the like).

A compiled algorithm that takes a user function as a static argument would otherwise be keyed on
the function *object*: a call written with an inline ``lambda theta: (...)`` makes a new object
every time and pays a full compile on every call. :func:`split_fn` instead keys the function on
what determines its behavior:

- its code object, the module globals dict it runs in, and the values of the module globals its
  code reads (snapshotted now), its defaults and closure cells;
- Python constants (``None``, bools, ints, floats, strings) in those places by value (floats by
  their exact bits, so ``0.0`` and ``-0.0`` differ), nested local functions and lambdas
  recursively, tuples/lists/dicts element-wise, ``functools.partial`` by its parts, and
  persistent objects (modules, classes, generative functions, module-level functions, frozen
  dataclasses) by their own equality;
- arrays (``jax.Array``, numeric ``numpy.ndarray``) by shape and dtype only: their values are
  *lifted* out (returned as data) and :meth:`FnSpec.rebuild` makes a copy of the function that
  reads the traced values instead, so a new lambda closing over new data of the same shape reuses
  the compiled program.

Two functions with different code or different constants never get equal keys. A function that
cannot be described this way (any other object in its closure or globals, e.g. an instance that
could be mutated between calls; a callable object) is keyed on its identity, as before.
Module-level helper functions that the function calls are keyed on their identity: a module
global that such a helper reads is not part of the key (as with ``jax.jit``).

Examples:
    >>> import jax.numpy as jnp
    >>> def make(c, xs):
    ...     return lambda a: a * c + xs
    >>> s1, d1 = split_fn(make(2.0, jnp.ones(3)))
    >>> s2, d2 = split_fn(make(2.0, jnp.zeros(3)))      # new object, new data, same shapes
    >>> s1 == s2, len(d1)
    (True, 1)
    >>> split_fn(make(3.0, jnp.ones(3)))[0] == s1       # another constant: another program
    False
    >>> s2.rebuild(d2)(1.0)
    Array([2., 2., 2.], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import sys
import types

import jax
import numpy as np

from ppl.lru import LRUCache

__all__ = ["FnSpec", "split_fn", "call_with_fns"]


class _Unsupported(Exception):
    pass


class _Hole:
    """Where a lifted array sits in a stored template (the template keeps no data alive)."""

    def __repr__(self):
        return "<lifted>"


_HOLE = _Hole()
_EMPTY = ("empty-cell",)
_MISSING = ("missing-global",)
_MAX_DEPTH = 32


def _liftable(x) -> bool:
    if x is _HOLE or isinstance(x, jax.Array):
        return True
    return isinstance(x, np.ndarray) and x.dtype.kind in "biufc"


def _is_module_function(fn) -> bool:
    """Reachable as ``module.qualname``: a persistent object, keyed on its identity."""
    qual = getattr(fn, "__qualname__", "")
    if "<locals>" in qual or "<lambda>" in qual:
        return False
    obj = sys.modules.get(getattr(fn, "__module__", None) or "")
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


def _global_names(code, out: set) -> set:
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):  # nested functions, lambdas, comprehensions
            _global_names(c, out)
    return out


def _read_globals(fn) -> tuple:
    g = fn.__globals__
    return tuple((name, g.get(name, _MISSING)) for name in sorted(_global_names(fn.__code__, set())))


def _skeleton(obj, lifted: list, depth: int, active: frozenset, top: bool = False):
    """A hashable description of ``obj``; arrays go to ``lifted`` (their shape and dtype stay)."""
    if depth > _MAX_DEPTH:
        raise _Unsupported("nesting too deep")
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return ("v", type(obj), obj)
    if isinstance(obj, float):
        return ("v", type(obj), obj.hex())
    if isinstance(obj, complex):
        return ("v", complex, obj.real.hex(), obj.imag.hex())
    if _liftable(obj):
        if obj is _HOLE:
            raise _Unsupported("a template is not a user function")
        lifted.append(obj)
        return ("a", type(obj) is np.ndarray, np.shape(obj), str(obj.dtype), bool(getattr(obj, "weak_type", False)))
    if id(obj) in active:
        raise _Unsupported("a function that refers to itself")
    active = active | {id(obj)}
    if isinstance(obj, types.FunctionType):
        if not top and _is_module_function(obj):
            return ("h", obj)
        cells = tuple(_skeleton(c.cell_contents, lifted, depth + 1, active) if _filled(c) else _EMPTY
                      for c in obj.__closure__ or ())
        return ("fn", obj.__code__, id(obj.__globals__),
                _skeleton(obj.__defaults__ or (), lifted, depth + 1, active),
                _skeleton(obj.__kwdefaults__ or {}, lifted, depth + 1, active), cells,
                tuple((name, _skeleton(v, lifted, depth + 1, active) if v is not _MISSING else _MISSING)
                      for name, v in _read_globals(obj)))
    if isinstance(obj, functools.partial):
        return ("partial", _skeleton(obj.func, lifted, depth + 1, active),
                _skeleton(obj.args, lifted, depth + 1, active), _skeleton(obj.keywords, lifted, depth + 1, active))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("nt", type(obj), tuple(_skeleton(x, lifted, depth + 1, active) for x in obj))
    if type(obj) in (tuple, list):
        return ("seq", type(obj), tuple(_skeleton(x, lifted, depth + 1, active) for x in obj))
    if type(obj) is dict:
        keys = tuple(obj)
        hash(keys)
        return ("dict", keys, tuple(_skeleton(obj[k], lifted, depth + 1, active) for k in keys))
    if _persistent(obj):
        hash(obj)
        return ("h", obj)
    # anything else (an instance that may be mutated between calls, a non-numeric NumPy value):
    # the caller falls back to the function's identity
    raise _Unsupported(f"a {type(obj).__name__} object")


def _persistent(obj) -> bool:
    """Objects keyed by their own equality: modules, classes, generative functions, dtypes, enums,
    frozen dataclasses and module-level callables (functions, jitted functions, ufuncs)."""
    from ppl.core import GenerativeFunction

    if isinstance(obj, (types.ModuleType, type, GenerativeFunction, np.dtype, enum.Enum, np.ufunc,
                        types.BuiltinFunctionType)):
        return True
    if dataclasses.is_dataclass(obj) and obj.__dataclass_params__.frozen and obj.__dataclass_params__.eq:
        return True
    return callable(obj) and _is_module_function(obj)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def _rebuild(obj, it, active: frozenset, top: bool = False):
    """A copy of ``obj`` with its lifted arrays (in :func:`_skeleton`'s order) taken from ``it``.

    Parts without lifted arrays are returned as they are."""
    if obj is None or isinstance(obj, (bool, int, str, bytes, float, complex)):
        return obj
    if _liftable(obj):
        return next(it)
    if id(obj) in active:
        return obj
    active = active | {id(obj)}
    if isinstance(obj, types.FunctionType):
        if not top and _is_module_function(obj):
            return obj
        cells = tuple(types.CellType(_rebuild(c.cell_contents, it, active)) if _filled(c) else types.CellType()
                      for c in obj.__closure__ or ())
        defaults = _rebuild(obj.__defaults__, it, active) if obj.__defaults__ else obj.__defaults__
        kwdefaults = _rebuild(obj.__kwdefaults__, it, active) if obj.__kwdefaults__ else obj.__kwdefaults__
        g = obj.__globals__
        new_globals = {}
        for name, v in _read_globals(obj):
            if v is not _MISSING:
                nv = _rebuild(v, it, active)
                if nv is not v:
                    new_globals[name] = nv
        if new_globals:
            g = {**g, **new_globals}
        fn = types.FunctionType(obj.__code__, g, obj.__name__, defaults, cells if obj.__closure__ else None)
        fn.__kwdefaults__ = kwdefaults
        fn.__dict__.update(obj.__dict__)
        fn.__qualname__ = obj.__qualname__
        fn.__module__ = obj.__module__
        return fn
    if isinstance(obj, functools.partial):
        return functools.partial(_rebuild(obj.func, it, active), *_rebuild(obj.args, it, active),
                                 **_rebuild(obj.keywords, it, active))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*[_rebuild(x, it, active) for x in obj])
    if type(obj) in (tuple, list):
        return type(obj)(_rebuild(x, it, active) for x in obj)
    if type(obj) is dict:
        return {k: _rebuild(v, it, active) for k, v in obj.items()}
    return obj


class FnSpec:
    """The static part of a user function (see the module docs): hashable, equal for functions with
    the same code and constants, holding a template of the function without its lifted arrays.

    ``n_lifted``: how many arrays :func:`split_fn` lifted out; :meth:`rebuild` puts (traced)
    values back. A spec made by ``split_fn(fn, lift=False)`` or for a function that cannot be
    described is keyed on the function's identity and lifts nothing.
    """

    __slots__ = ("template", "key", "n_lifted")

    def __init__(self, template, key, n_lifted):
        self.template, self.key, self.n_lifted = template, key, n_lifted

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, FnSpec) and self.key == other.key

    def __repr__(self):
        return f"FnSpec({getattr(self.template, '__qualname__', self.template)!r}, lifted={self.n_lifted})"

    def rebuild(self, data):
        """The function, reading ``data`` (one value per lifted array, in order) where it held arrays."""
        if self.n_lifted == 0:
            return self.template
        data = tuple(data)
        if len(data) != self.n_lifted:
            raise ValueError(f"FnSpec.rebuild: expected {self.n_lifted} values, got {len(data)}")
        it = iter(data)
        return _rebuild(self.template, it, frozenset(), top=True)


class _ByIdentity:
    """Key of a function that cannot be described: the object itself (hash by id)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.fn is self.fn


def split_fn(fn, lift: bool = True):
    """``(FnSpec, lifted arrays)`` of a user function: pass the spec as a static argument and the
    arrays as data of a compiled program, and call ``spec.rebuild(arrays)`` inside it.

    With ``lift=False`` (or for a function whose closure holds something unhashable) the spec is
    keyed on the function's identity (the behavior of passing the function itself as static).

    Examples:
        >>> import jax.numpy as jnp
        >>> make = lambda: (lambda a, c=2: a * c)
        >>> spec, data = split_fn(make())
        >>> data, spec == split_fn(make())[0]   # another object from the same code
        ((), True)
    """
    if lift:
        lifted: list = []
        try:
            key = _skeleton(fn, lifted, 0, frozenset(), top=True)
            hash(key)
        except (_Unsupported, TypeError, RecursionError):
            pass
        else:
            holes = iter([_HOLE] * len(lifted))
            template = _rebuild(fn, holes, frozenset(), top=True) if lifted else fn
            return FnSpec(template, ("fn", key), len(lifted)), tuple(lifted)
    return FnSpec(fn, ("id", _ByIdentity(fn)), 0), ()


# specs whose lifted version failed to trace (the function uses an array's concrete value): keyed
# on identity from then on
_NO_LIFT = LRUCache(256)
_TRACE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                 jax.errors.TracerIntegerConversionError, jax.errors.NonConcreteBooleanIndexError)


def _is_trace_error(err) -> bool:
    seen = 0
    while err is not None and seen < 16:
        if isinstance(err, _TRACE_ERRORS):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def call_with_fns(call, **fns):
    """``call(**{name: (spec, lifted arrays)})`` for the user functions ``fns`` (``None`` stays ``None``).

    If tracing with lifted arrays fails because a function needs an array's concrete value (e.g.
    ``np.log(xs)`` on a closed-over NumPy array, or ``int(n)``), the call is retried with those
    functions keyed on their identity (arrays as compile-time constants), and that is remembered.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> run = jax.jit(lambda data, spec: spec.rebuild(data)(1.0), static_argnums=1)
        >>> xs = jnp.arange(3.0)
        >>> call_with_fns(lambda f: run(f[1], f[0]), f=lambda a: a + xs)
        Array([1., 2., 3.], dtype=float32)
    """
    split = {}
    for name, fn in fns.items():
        if fn is None:
            split[name] = (None, ())
            continue
        spec, data = split_fn(fn)
        if spec.n_lifted and _NO_LIFT.get(spec.key) is not None:
            spec, data = split_fn(fn, lift=False)
        split[name] = (spec, data)
    if not any(spec is not None and spec.n_lifted for spec, _ in split.values()):
        return call(**split)
    try:
        return call(**split)
    except Exception as err:  # noqa: BLE001 - only tracing errors caused by lifting are retried
        if not _is_trace_error(err):
            raise
    for name, (spec, _) in list(split.items()):
        if spec is not None and spec.n_lifted:
            _NO_LIFT[spec.key] = True
            split[name] = split_fn(fns[name], lift=False)
    return call(**split)
