"""Fitting variational parameters: an optax loop under ``jit`` with progress, history, checkpoints.

:func:`fit` maximizes an expectation program (an objective such as ``vi.elbo(model, guide)``) by
stochastic gradient ascent: each step draws ``fold_in(key, step)``, computes
``objective.value_and_grad_estimate`` once (the logged value comes from the same pass) and applies
an optax update to ``-gradient``. Steps run as ``lax.scan`` chunks of
:func:`inference.checkpoint.chunked_loop`, compiled once per objective and optimizer *structure*
(fingerprints of their code and closures; the optimizer's floating-point hyperparameters are
passed as data) and argument shapes: new data of the same shapes, or a fresh objective or
optimizer object built the same way, does not recompile; a tqdm progress bar advances between
chunks. With ``checkpoint_dir`` the state is saved after every chunk and a later call resumes from
the latest intact checkpoint, bit-identically, after checking that the key, objective, optimizer
and parameter shapes/dtypes match the saved run. :func:`minibatch` marks a data
argument that is subsampled (with replacement) at every step.

Examples:
    >>> import jax, jax.numpy as jnp, optax, ppl
    >>> from inference import vi
    >>> @vi.expectation
    ... def objective(key, p):
    ...     z = ppl.normal.simulate(key, p["m"], 1.0).retval
    ...     return -(z - 3.0) ** 2
    >>> res = vi.fit(jax.random.key(0), objective, {"m": jnp.array(0.0)}, optax.adam(0.1), 300, progress=False)
    >>> bool(abs(res.params["m"] - 3.0) < 0.3), res.losses.shape
    (True, (300,))
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference.checkpoint import chunked_loop, run_chunk as _run_chunk
from inference.sharding import active_mesh, constrain_batch, constrain_replicated
from ppl.core import pack_args, unpack_args
from ppl.errors import NonFiniteError

from .adev import Expectation

__all__ = ["fit", "FitResult", "minibatch", "Minibatch", "optimizer_key"]

# the compiled chunk program shared by every fit (inspect with ``_chunk._cache_size()``)
_chunk = _run_chunk


@jax.tree_util.register_pytree_node_class
class Minibatch:
    """A data pytree (leading axis = data points) subsampled to ``batch_size`` at every step."""

    def __init__(self, data, batch_size: int):
        self.data = data
        self.batch_size = int(batch_size)

    def tree_flatten(self):
        return (self.data,), self.batch_size

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], aux)

    def size(self) -> int:
        return jax.tree_util.tree_leaves(self.data)[0].shape[0]

    def sample(self, key):
        """A batch of ``batch_size`` data points drawn uniformly with replacement."""
        idx = jax.random.randint(key, (self.batch_size,), 0, self.size())
        return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), self.data)


def minibatch(data, batch_size: int) -> Minibatch:
    """Mark ``data`` (arrays or a pytree, leading axis = data points) for minibatching in :func:`fit`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> mb = minibatch(jnp.arange(10.0), 4)
        >>> mb.sample(jax.random.key(0)).shape
        (4,)
    """
    return Minibatch(data, batch_size)


@dataclasses.dataclass
class FitResult:
    """``params``, ``opt_state`` and ``losses`` (the negated objective estimate at every step)."""

    params: Any
    opt_state: Any
    losses: np.ndarray

    @property
    def objective(self) -> np.ndarray:
        """The objective estimate at every step (``-losses``)."""
        return -self.losses


def _batch_args(key, args, mesh=None):
    # every minibatched argument uses the same key: arguments of the same size get the same indices;
    # under a mesh the drawn batch's data axis is laid out across the devices (data parallelism)
    return tuple(constrain_batch(a.sample(key), mesh) if isinstance(a, Minibatch) else a for a in args)


def _step(objective, optimizer, key, params, opt_state, args, mesh=None):
    k_obj, k_batch = jax.random.split(key)
    args = _batch_args(k_batch, args, mesh)
    value, grads = objective.value_and_grad_estimate(k_obj, params, *args)
    updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grads), opt_state, params)
    # under a mesh the parameters stay replicated (the gradient is reduced over the sharded batch)
    return constrain_replicated((optax.apply_updates(params, updates), opt_state, -value), mesh)


# ------------------------------------------------------------------------------ optimizer fingerprint
class _Unsupported(Exception):
    pass


def _is_global_function(fn) -> bool:
    """A function reachable as ``module.qualname`` (persistent: safe to key on by identity)."""
    if "<locals>" in fn.__qualname__ or "<lambda>" in fn.__qualname__:
        return False
    obj = sys.modules.get(fn.__module__)
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


def _is_float_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array, np.floating)) and jnp.issubdtype(x.dtype, jnp.floating)


def _fingerprint(obj, lift: bool, floats: list, desc: dict, path: str, active: set):
    """A hashable skeleton of ``obj`` (an optax transformation and everything its closures hold).

    Functions are described by their code, module, defaults and closure cells (not their identity),
    so two ``optax.adam(1e-2)`` objects have equal skeletons. With ``lift``, floating-point numbers
    are collected into ``floats`` (to be passed to the compiled step as data) and only their type
    is part of the skeleton; otherwise their values are. ``desc`` gets a stable, readable
    ``path -> value`` record (for checkpoint metadata)."""
    if len(active) > 64:
        raise _Unsupported("optimizer closure nesting too deep")
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        desc[path] = obj if isinstance(obj, (bool, int, str)) or obj is None else repr(obj)
        return ("v", type(obj), obj)
    if isinstance(obj, float) or _is_float_array(obj):
        desc[path] = float(obj) if np.ndim(obj) == 0 else f"array{np.shape(obj)} {np.asarray(obj).dtype}"
        if lift:
            floats.append(np.asarray(obj) if isinstance(obj, np.floating) else obj)
            return ("f", type(obj), np.shape(obj), "" if isinstance(obj, float) else str(np.asarray(obj).dtype))
        if np.size(obj) * 8 > 1 << 20:
            raise _Unsupported("a large array in a closure (keyed by identity instead of by value)")
        a = np.asarray(obj)
        return ("fv", type(obj), a.shape, str(a.dtype), a.tobytes())
    if isinstance(obj, (np.ndarray, jax.Array)):
        if obj.nbytes > 1 << 20:
            raise _Unsupported("a large array in a closure (keyed by identity instead of by value)")
        a = np.asarray(obj)
        desc[path] = f"array{a.shape} {a.dtype} sha256:{hashlib.sha256(a.tobytes()).hexdigest()[:16]}"
        return ("a", type(obj), a.shape, str(a.dtype), a.tobytes())
    if id(obj) in active:
        raise _Unsupported("optimizer closure refers to itself")
    active = active | {id(obj)}
    if isinstance(obj, types.FunctionType):
        name = f"{obj.__module__}.{obj.__qualname__}"
        if _is_global_function(obj):
            desc[path] = name
            return ("g", obj)
        desc[path] = name
        cells = []
        for var, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:
                cells.append(("empty",))
                continue
            cells.append(_fingerprint(content, lift, floats, desc, f"{path}.{var}", active))
        defaults = _fingerprint(obj.__defaults__ or (), lift, floats, desc, f"{path}.__defaults__", active)
        kwdefaults = _fingerprint(obj.__kwdefaults__ or {}, lift, floats, desc, f"{path}.__kwdefaults__", active)
        return ("fn", obj.__code__, obj.__module__, defaults, kwdefaults, tuple(cells))
    if isinstance(obj, functools.partial):
        return ("partial", _fingerprint(obj.func, lift, floats, desc, f"{path}.func", active),
                _fingerprint(obj.args, lift, floats, desc, f"{path}.args", active),
                _fingerprint(obj.keywords, lift, floats, desc, f"{path}.keywords", active))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("nt", type(obj), tuple(_fingerprint(getattr(obj, f), lift, floats, desc, f"{path}.{f}" if path else f,
                                                    active) for f in obj._fields))
    if type(obj) in (tuple, list):
        return ("seq", type(obj), tuple(_fingerprint(x, lift, floats, desc, f"{path}[{i}]", active)
                                        for i, x in enumerate(obj)))
    if type(obj) is dict:
        keys = tuple(obj)
        try:
            hash(keys)
        except TypeError as err:
            raise _Unsupported("unhashable dict keys in the optimizer") from err
        return ("dict", keys, tuple(_fingerprint(obj[k], lift, floats, desc, f"{path}[{k!r}]", active)
                                    for k in keys))
    if isinstance(obj, (set, frozenset)):
        desc[path] = sorted(map(repr, obj))
        return ("set", type(obj), frozenset(obj))
    try:
        hash(obj)
    except TypeError as err:
        raise _Unsupported(f"unhashable {type(obj).__name__} in the optimizer") from err
    # other hashable objects (modules, classes, dtypes, enums, instances): static, by equality
    desc[path] = f"{type(obj).__module__}.{type(obj).__qualname__}"
    return ("h", obj)


def _rebuild(obj, floats):
    """A copy of ``obj`` with its floats replaced, in :func:`_fingerprint`'s order, from iterator ``floats``."""
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return obj
    if isinstance(obj, float) or _is_float_array(obj):
        return next(floats)
    if isinstance(obj, (np.ndarray, jax.Array)):
        return obj
    if isinstance(obj, types.FunctionType):
        if _is_global_function(obj):
            return obj
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(types.CellType(_rebuild(cell.cell_contents, floats)))
            except ValueError:
                cells.append(types.CellType())
        defaults = _rebuild(obj.__defaults__ or (), floats) or None
        kwdefaults = _rebuild(obj.__kwdefaults__ or {}, floats) or None
        fn = types.FunctionType(obj.__code__, obj.__globals__, obj.__name__, defaults,
                                tuple(cells) if obj.__closure__ else None)
        fn.__kwdefaults__ = kwdefaults
        fn.__dict__.update(obj.__dict__)
        fn.__qualname__ = obj.__qualname__
        return fn
    if isinstance(obj, functools.partial):
        func = _rebuild(obj.func, floats)
        args = _rebuild(obj.args, floats)
        return functools.partial(func, *args, **_rebuild(obj.keywords, floats))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*[_rebuild(getattr(obj, f), floats) for f in obj._fields])
    if type(obj) in (tuple, list):
        return type(obj)(_rebuild(x, floats) for x in obj)
    if type(obj) is dict:
        return {k: _rebuild(v, floats) for k, v in obj.items()}
    return obj


class _OptSpec:
    """An optax transformation keyed by its structural fingerprint instead of its identity.

    ``lifted``: its floating-point hyperparameters travel as data (``hypers``) and
    :meth:`rebuild` makes an equivalent transformation from traced values, so optimizers that
    differ only in those numbers share one compiled program. Otherwise the numbers are part of the
    key. Either way, two optimizers with different hyperparameters never share a program with
    baked-in constants. ``identity``: the fingerprint failed (an unhashable object in a closure);
    the object itself is the key."""

    __slots__ = ("template", "key", "lifted", "hypers", "description")

    def __init__(self, template, key, lifted, hypers, description):
        self.template, self.key, self.lifted = template, key, lifted
        self.hypers, self.description = hypers, description

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _OptSpec) and self.key == other.key

    def rebuild(self, hypers):
        if not self.lifted:
            return self.template
        it = iter(hypers)
        out = _rebuild(self.template, it)
        if next(it, None) is not None:
            raise AssertionError("optimizer hyperparameters left over after rebuilding")
        return out


_LIFT_OK: dict = {}  # (skeleton, params/state shapes) -> lifting the floats preserves update's output types


def _lift_ok(spec, params, opt_state) -> bool:
    cache_key = (spec.key, jax.tree_util.tree_structure((params, opt_state)),
                 tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves((params, opt_state))))
    if cache_key not in _LIFT_OK:
        if len(_LIFT_OK) > 256:
            _LIFT_OK.clear()
        try:
            grads = jax.tree_util.tree_map(jnp.zeros_like, params)
            want = jax.eval_shape(spec.template.update, grads, opt_state, params)
            got = jax.eval_shape(lambda h, g, s, p: spec.rebuild(h).update(g, s, p), spec.hypers, grads, opt_state,
                                 params)
            ok = jax.tree_util.tree_structure(want) == jax.tree_util.tree_structure(got) and all(
                (a.shape, a.dtype, a.weak_type) == (b.shape, b.dtype, b.weak_type)
                for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)))
        except Exception:  # noqa: BLE001 - e.g. Python control flow on a hyperparameter: keep it static
            ok = False
        _LIFT_OK[cache_key] = ok
    return _LIFT_OK[cache_key]


def _optimizer_spec(optimizer, params, opt_state) -> _OptSpec:
    """The compile key of ``optimizer``: hyperparameters as data when that is safe, else by value."""
    try:
        floats, desc = [], {}
        skeleton = _fingerprint(optimizer, True, floats, desc, "", set())
        hash(skeleton)
    except (_Unsupported, TypeError):
        return _OptSpec(optimizer, ("identity", id(optimizer), optimizer), False, (),
                        {"type": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"})
    # the update's settings first: a mismatch message then names the update's differing part
    desc = dict(sorted(desc.items(), key=lambda kv: not kv[0].startswith("update")))
    spec = _OptSpec(optimizer, ("lifted", skeleton), True, tuple(floats), desc)
    if _lift_ok(spec, params, opt_state):
        return spec
    static = _fingerprint(optimizer, False, [], {}, "", set())
    return _OptSpec(optimizer, ("static", static), False, (), desc)


def optimizer_key(optimizer):
    """A hashable stand-in for an optax ``optimizer`` in a compile key, equal for optimizers with
    the same structure and hyperparameter values (a fresh ``optax.adam(0.05)`` per call matches
    the last one); the hyperparameters stay compile-time constants. ``.template`` is the
    optimizer. One that cannot be fingerprinted (e.g. a closure over a mutable object) is keyed on
    its identity.

    Examples:
        >>> import optax
        >>> optimizer_key(optax.adam(0.05)) == optimizer_key(optax.adam(0.05))
        True
        >>> optimizer_key(optax.adam(0.05)) == optimizer_key(optax.adam(0.1))
        False
    """
    try:
        skeleton = _fingerprint(optimizer, False, [], {}, "", set())
        hash(skeleton)
    except (_Unsupported, TypeError, RecursionError):
        return _OptSpec(optimizer, ("identity", id(optimizer), optimizer), False, (), {})
    return _OptSpec(optimizer, ("static", skeleton), False, (), {})


def _objective_key(objective):
    """Objectives built anew from the same pieces (``vi.elbo(model, guide)`` per call) share a key:
    a plain :class:`Expectation` is keyed on its function's code and closure (values included),
    anything else (or a closure that cannot be fingerprinted) on its identity."""
    if type(objective) is Expectation:
        try:
            skeleton = _fingerprint(objective.fn, False, [], {}, "", set())
            hash(skeleton)
            return ("fn", objective.name, skeleton)
        except (_Unsupported, TypeError):
            pass
    return ("id", objective)


class _FitStep:
    """The step of :func:`fit` as a hashable object (objective and optimizer fingerprints) for chunked_loop."""

    __slots__ = ("objective", "opt", "mesh", "key")

    def __init__(self, objective, opt: _OptSpec, mesh=None):
        self.objective, self.opt, self.mesh = objective, opt, mesh
        self.key = (_objective_key(objective), opt, mesh)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _FitStep) and other.key == self.key

    def __call__(self, key, state, data):
        hypers, packed = data
        params, opt_state, loss = _step(self.objective, self.opt.rebuild(hypers), key, state["params"],
                                        state["opt_state"], unpack_args(packed), self.mesh)
        return {"params": params, "opt_state": opt_state}, loss


def fit(key, objective: Expectation, params, optimizer, n_steps: int, *args, chunk_size: int | None = None,
        progress: bool = True, checkpoint_dir: str | None = None, opt_state=None,
        keep_checkpoints: int = 3) -> FitResult:
    """Maximize ``objective`` over ``params`` with optax ``optimizer`` for ``n_steps`` steps.

    ``args`` are passed to the objective after ``params``; wrap data in :func:`minibatch` to
    subsample it at every step (minibatched arguments of the same size get the same indices, so
    observations and the guide's inputs stay aligned). Returns a :class:`FitResult` (``params``, ``opt_state``, ``losses``
    = negated objective estimates). Raises :class:`ppl.NonFiniteError` naming the first step whose
    objective estimate or parameters are not finite.

    The steps run through :func:`inference.checkpoint.chunked_loop`. The compiled chunk is keyed on
    structural fingerprints of the objective and the optimizer (their functions' code and closures,
    not the objects' identities) and the argument shapes; the optimizer's floating-point hyperparameters
    (learning rate, betas, schedule constants, ...) are passed as data when the optimizer's update
    accepts them traced, so a fresh ``optax.adam(lr)`` per call, for any ``lr``, does not recompile;
    otherwise they are part of the key. With ``checkpoint_dir`` the run is checkpointed after every
    chunk (the last ``keep_checkpoints`` are kept) and resumed from the latest intact checkpoint;
    resuming with another key, objective name, optimizer (fingerprint: function names and
    hyperparameter values), params/optimizer-state structure, shapes or dtypes raises
    :class:`inference.checkpoint.CheckpointMismatchError`; ``n_steps`` may grow (the run continues)
    but not fall below the checkpoint's step.

    Data parallelism: inside ``inference.sharding.batch_sharding(mesh)`` every minibatch drawn
    at a step has its data axis laid out across the mesh's devices and the parameters and optimizer
    state stay replicated, so the objective's sum over the batch runs in parallel and its gradient
    is all-reduced; losses and parameters equal a one-device run up to float32 rounding (the
    summation order differs). The mesh is part of the compilation key. Across processes (after
    ``jax.distributed.initialize``) place the full data with ``sharding.shard_batch(data, mesh,
    process_local=True)`` from each process's slice (see docs/scaling.md).

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from inference import vi
        >>> @vi.expectation
        ... def objective(key, p, xs):
        ...     return -jnp.mean((xs - p["m"]) ** 2)
        >>> xs = vi.minibatch(jnp.linspace(0.0, 2.0, 50), 8)
        >>> res = vi.fit(jax.random.key(0), objective, {"m": jnp.array(5.0)}, optax.sgd(0.1), 200, xs,
        ...              progress=False)
        >>> bool(abs(res.params["m"] - 1.0) < 0.3)
        True
    """
    if not isinstance(objective, Expectation):
        raise TypeError(f"vi.fit: objective must be a vi.expectation program, got {objective!r}")
    n_steps = int(n_steps)
    chunk = int(chunk_size or max(1, min(n_steps, max(10, n_steps // 20))))
    if opt_state is None:
        opt_state = optimizer.init(params)
    spec = _optimizer_spec(optimizer, params, opt_state)
    fn = getattr(objective, "fn", None)
    settings = {
        "objective": f"{objective.name} ({getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')})",
        "optimizer": spec.description,
    }

    def validate(start, size, state, chunk_losses):
        bad = ~np.isfinite(chunk_losses)
        finite_params = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(state["params"]))
        if bad.any() or not finite_params:
            step = start + (int(np.argmax(bad)) if bad.any() else size - 1)
            raise NonFiniteError(
                f"vi.fit {objective.name}: the objective estimate or the parameters became non-finite "
                f"at step {step} (steps {start}..{start + size - 1}); lower the learning rate, check the "
                "model's log densities under ppl.debug(), or clip gradients (optax.clip_by_global_norm)")

    state, losses = chunked_loop(
        key, _FitStep(objective, spec, active_mesh()), {"params": params, "opt_state": opt_state}, n_steps, chunk,
        checkpoint_dir, progress,
        f"vi.fit {objective.name}", data=(spec.hypers, pack_args(tuple(args))), keep=keep_checkpoints,
        settings=settings, validate=validate, postfix=lambda ls: {"loss": float(ls[-1])})
    return FitResult(state["params"], state["opt_state"], losses)
