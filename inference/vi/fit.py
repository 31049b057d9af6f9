"""Fitting variational parameters: an optax loop under ``jit`` with progress, history, checkpoints.

:func:`fit` maximizes an expectation program (an objective such as ``vi.elbo(model, guide)``) by
stochastic gradient ascent: each step draws ``fold_in(key, step)``, computes
``objective.value_and_grad_estimate`` once (the logged value comes from the same pass) and applies
an optax update to ``-gradient``. Steps run as ``lax.scan`` chunks compiled once per objective,
optimizer and argument shapes (new data of the same shapes does not recompile); a tqdm progress
bar advances between chunks. With ``checkpoint_dir`` the state is saved after every chunk and a
later call resumes from the latest checkpoint, bit-identically. :func:`minibatch` marks a data
argument that is subsampled (with replacement) at every step.

Example:
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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.core import pack_args, unpack_args
from ppl.errors import NonFiniteError

from .adev import Expectation

__all__ = ["fit", "FitResult", "minibatch", "Minibatch"]


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

    Example:
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


def _batch_args(key, args):
    # every minibatched argument uses the same key: arguments of the same size get the same indices
    return tuple(a.sample(key) if isinstance(a, Minibatch) else a for a in args)


def _step(objective, optimizer, key, params, opt_state, args):
    k_obj, k_batch = jax.random.split(key)
    args = _batch_args(k_batch, args)
    value, grads = objective.value_and_grad_estimate(k_obj, params, *args)
    updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grads), opt_state, params)
    return optax.apply_updates(params, updates), opt_state, -value


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _chunk(objective, optimizer, size, key, start, params, opt_state, packed):
    args = unpack_args(packed)

    def body(carry, i):
        p, s = carry
        p, s, loss = _step(objective, optimizer, jax.random.fold_in(key, i), p, s, args)
        return (p, s), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), start + jnp.arange(size))
    return params, opt_state, losses


class _Hashed:
    """Wrap an optax GradientTransformation so it can be a static jit argument (by identity)."""

    __slots__ = ("opt",)

    def __init__(self, opt):
        self.opt = opt

    def __hash__(self):
        return id(self.opt)

    def __eq__(self, other):
        return isinstance(other, _Hashed) and other.opt is self.opt

    def init(self, p):
        return self.opt.init(p)

    def update(self, g, s, p):
        return self.opt.update(g, s, p)


def fit(key, objective: Expectation, params, optimizer, n_steps: int, *args, chunk_size: int | None = None,
        progress: bool = True, checkpoint_dir: str | None = None, opt_state=None) -> FitResult:
    """Maximize ``objective`` over ``params`` with optax ``optimizer`` for ``n_steps`` steps.

    ``args`` are passed to the objective after ``params``; wrap data in :func:`minibatch` to
    subsample it at every step (minibatched arguments of the same size get the same indices, so
    observations and the guide's inputs stay aligned). Returns a :class:`FitResult` (``params``, ``opt_state``, ``losses``
    = negated objective estimates). Raises :class:`ppl.NonFiniteError` naming the first step whose
    objective estimate or parameters are not finite.

    Example:
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
    opt = _Hashed(optimizer)
    if opt_state is None:
        opt_state = optimizer.init(params)
    packed = pack_args(tuple(args))
    done, losses = 0, []
    if checkpoint_dir is not None:
        from inference import checkpoint as ckpt

        last = ckpt.latest_step(checkpoint_dir)
        if last is not None:
            like = {"params": params, "opt_state": opt_state, "losses": jnp.zeros((last,), jnp.float32)}
            saved = ckpt.restore(checkpoint_dir, like, last)
            params, opt_state, losses, done = saved["params"], saved["opt_state"], [np.asarray(saved["losses"])], last
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, initial=done, desc=f"vi.fit {objective.name}", leave=False)
    while done < n_steps:
        size = min(chunk, n_steps - done)
        new_params, new_state, chunk_losses = _chunk(objective, opt, size, key, done, params, opt_state, packed)
        chunk_losses = np.asarray(chunk_losses)
        bad = ~np.isfinite(chunk_losses)
        finite_params = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new_params))
        if bad.any() or not finite_params:
            step = done + (int(np.argmax(bad)) if bad.any() else size - 1)
            if bar is not None:
                bar.close()
            raise NonFiniteError(
                f"vi.fit {objective.name}: the objective estimate or the parameters became non-finite "
                f"at step {step} (steps {done}..{done + size - 1}); lower the learning rate, check the "
                "model's log densities under ppl.debug(), or clip gradients (optax.clip_by_global_norm)")
        params, opt_state = new_params, new_state
        losses.append(chunk_losses)
        done += size
        if bar is not None:
            bar.update(size)
            bar.set_postfix(loss=float(chunk_losses[-1]))
        if checkpoint_dir is not None:
            ckpt.save(checkpoint_dir, done, {"params": params, "opt_state": opt_state,
                                             "losses": jnp.asarray(np.concatenate(losses))})
    if bar is not None:
        bar.close()
    return FitResult(params, opt_state, np.concatenate(losses) if losses else np.zeros((0,), np.float32))
