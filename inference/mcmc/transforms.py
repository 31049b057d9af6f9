"""Unconstrained views of a trace for gradient-based kernels.

Gradient kernels move the selected continuous choices in unconstrained space: a positive site
``x`` is moved as ``u = log x``, a unit-interval site as ``logit x``, a simplex site by
stick-breaking (one coordinate fewer), each with the log-Jacobian of ``x = T(u)`` added to the
density. ``T = numpyro.distributions.transforms.biject_to(d.support)`` is chosen *inside* the
model's execution, at the site, so a support that depends on other choices (``uniform(0, b)``
with a sampled ``b``) is handled. This is done with a :class:`ppl.core.Interceptor` on
``update``:

- read mode: ``update`` with the current values, whose discard holds ``T^{-1}(x)`` (the
  current unconstrained values, read in the same pass as the rest of the model);
- write mode: given unconstrained ``u``, the site stores ``T(u)`` and adds ``log|det J_T(u)|``
  to the weight, so ``weight + old score`` is the log density of ``u``.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model():
    ...     return ppl.gamma(2.0, 1.0) @ "s"
    >>> tr = model.simulate(jax.random.key(0))
    >>> view = UnconstrainedView(tr.get_gen_fn(), (("s",),))
    >>> u = view.read(tr)
    >>> bool(jnp.allclose(jnp.exp(u[("s",)]), tr.choices["s"]))
    True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.distributions.constraints import Constraint
from numpyro.distributions.transforms import IdentityTransform, Transform, biject_to

from ppl.choicemap import ChoiceMap
from ppl.core import Interceptor, intercept
from ppl.lru import LRUCache
from ppl.errors import ModelError, fmt_addr
from ppl.scores import batched

from .base import cast_like

__all__ = ["UnconstrainedView", "unravel_like"]

#: (selected paths, trace structure and leaf types) -> (unconstrained shapes, transforms) of a read
_READ_SHAPES: LRUCache = LRUCache(256)


def _const_key():
    return jax.random.key(0)


def unravel_like(tree):
    """``flat -> tree``: the inverse of ``jax.flatten_util.ravel_pytree(tree)[0]`` (same order,
    same values) for arrays shaped like ``tree``'s leaves (arrays or ``jax.ShapeDtypeStruct``).

    Each leaf is a static slice of the flat vector. ``ravel_pytree``'s own inverse splits the
    vector in one op, whose gradient is one concatenation of per-leaf pieces; with many small
    sites (31 scalars) XLA compiles each piece as its own kernel, while a slice's gradient (a pad)
    fuses with its neighbours: the HMC program of a 31-site model compiles about 1.4x faster.
    Trees with mixed dtypes use ``ravel_pytree``'s inverse.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax.flatten_util import ravel_pytree
        >>> tree = {"a": jnp.zeros(2), "b": jnp.ones((2, 2))}
        >>> flat = ravel_pytree(tree)[0]
        >>> unravel_like(tree)(flat)["b"].shape
        (2, 2)
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dtypes = {jnp.dtype(x.dtype) for x in leaves}
    if len(dtypes) != 1:
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
        return ravel_pytree(zeros)[1]
    shapes = [tuple(x.shape) for x in leaves]
    sizes = [math.prod(s) for s in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    def unravel(flat):
        parts = [jax.lax.slice(flat, (a,), (a + n,)).reshape(s) for a, n, s in zip(starts, sizes, shapes)]
        return jax.tree_util.tree_unflatten(treedef, parts)

    return unravel


def constant_transform(t) -> bool:
    """Whether the transform (or constraint) ``t`` holds no array: its parameters, if any, are
    Python numbers (``real``, ``positive``, ``simplex``, ``interval(0.0, 2.0)``), so it is the same
    in every execution of the model, unlike ``interval(0.0, b)`` with a traced ``b``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from numpyro.distributions import constraints
        >>> constant_transform(biject_to(constraints.interval(0.0, 2.0)))
        True
        >>> constant_transform(biject_to(constraints.interval(0.0, jnp.array(2.0))))
        False
    """
    if t is None or isinstance(t, (bool, int, float, str)):
        return True
    if isinstance(t, (tuple, list)):
        return all(constant_transform(x) for x in t)
    if isinstance(t, (Transform, Constraint)):
        return all(constant_transform(v) for k, v in vars(t).items() if k != "_inv")
    return False


class _Unconstrain(Interceptor):
    raw_values = True
    scores_deferrable = True  # only values and log-Jacobians change: site densities stay batched

    def __init__(self, paths, read: bool, who: str):
        self.paths = frozenset(paths)
        self.read = read
        self.keeps_values = read  # read mode stores the old values: sites reading them are kept
        self.who = who
        self.transforms = {}  # read mode: path -> its transform if constant (else None)
        self.identity = set()  # write mode: the paths written without a transform (log-Jacobian 0)

    def handles(self, path):
        return path in self.paths

    def observe(self, path, gf, d, value, old_value):
        if getattr(d.support, "is_discrete", False):
            raise ModelError(
                f"{self.who}: the site at {fmt_addr(path)} ({gf.name}) is discrete; gradient-based "
                "kernels need continuous sites. Use mcmc.gibbs or mcmc.mh for it."
            )
        t = biject_to(d.support)
        if self.read:
            seen = path in self.transforms  # (twice: e.g. in both branches of a cond)
            self.transforms[path] = None if seen or not constant_transform(t) else t
            return old_value, 0.0, t.inv(old_value)
        # the discard reports the site's log-Jacobian (write sums them: see UnconstrainedView.write)
        if isinstance(t, IdentityTransform):  # a real site: no transform, no log-Jacobian ops
            self.identity.add(path)
            return value, 0.0, jnp.zeros((), jnp.result_type(value))
        x = t(value)
        ldj = jnp.sum(t.log_abs_det_jacobian(value, x))
        return x, ldj, ldj


class UnconstrainedView:
    """Read, score and write the selected sites of traces of ``model`` in unconstrained space.

    ``u`` is a dict ``{path: array}`` (a pytree), one entry per selected site.
    """

    def __init__(self, model, paths, who: str = "mcmc"):
        self.model = model
        self.paths = tuple(paths)
        self.who = who
        #: after :meth:`read`: per selected path, its transform ``T`` when constant (see
        #: :func:`constant_transform`), else ``None``
        self.transforms = None

    def read(self, trace):
        """Current unconstrained values of the selected sites."""
        chm = ChoiceMap({p: trace.choices[p] for p in self.paths})
        icpt = _Unconstrain(self.paths, True, self.who)
        with intercept(icpt):
            _, _, discard = self.model.update(_const_key(), trace, chm, *trace.get_args())
        self.transforms = tuple(icpt.transforms.get(p) for p in self.paths)
        tree = {p: discard[p] for p in self.paths}
        key = self._shapes_key(trace)
        if key is not None:  # later steps need these shapes: no abstract pass of their own
            _READ_SHAPES[key] = (jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree),
                                 self.transforms)
        return tree

    def read_shapes(self, trace):
        """``(shapes, transforms)`` of :meth:`read`'s result for traces shaped like ``trace``:
        the unconstrained values' ``jax.ShapeDtypeStruct`` s and the transforms the read saw. One
        abstract read per trace structure (none after a :meth:`read`), cached."""
        key = self._shapes_key(trace)
        found = None if key is None else _READ_SHAPES.get(key)
        if found is None:
            shapes = jax.eval_shape(self.read, trace)
            found = (shapes, self.transforms)
            if key is not None:
                _READ_SHAPES[key] = found
        return found

    def _shapes_key(self, trace):
        leaves, treedef = jax.tree_util.tree_flatten(trace)
        key = (self.paths, treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))
        try:
            hash(key)
        except TypeError:  # an unhashable model: no caching
            return None
        return key

    def constrained(self, transforms, trace, u):
        """``{path: T(u[path])}`` (cast to ``trace``'s types) without running the model, given
        the ``transforms`` a :meth:`read` recorded; ``None`` unless every one is constant."""
        if transforms is None or any(t is None for t in transforms):
            return None
        out = {}
        for p, t in zip(self.paths, transforms):
            like = trace.choices[p]
            x = u[p] if isinstance(t, IdentityTransform) else t(u[p])
            if jnp.shape(x) != jnp.shape(like):
                return None
            out[p] = x.astype(jnp.result_type(like))
        return out

    def write(self, trace, u):
        """``(new_trace, log_density)``: the trace with the selected sites at ``T(u)``, and the
        log density of ``u`` (model log density plus log-Jacobians)."""
        chm = ChoiceMap({p: u[p] for p in self.paths})
        icpt = _Unconstrain(self.paths, False, self.who)
        with intercept(icpt):
            new, _, ldjs = self.model.update(_const_key(), trace, chm, *trace.get_args())
        # the new trace's score (a fresh sum of its sites' log densities) plus the log-Jacobians,
        # not ``weight + trace.get_score()``: that difference of two large numbers loses the
        # density's precision when the trace's score is far from the new one (float32: a score of
        # -1e7 leaves a resolution of about 1), e.g. a position held away from the starting trace
        ldj = [jnp.sum(ldjs[p]) for p in self.paths if p not in icpt.identity]
        return new, new.get_score() + sum(ldj) if ldj else new.get_score()

    def realize(self, trace, u):
        """The trace with the selected sites at ``T(u)`` (:meth:`write`'s trace, its leaves cast to
        ``trace``'s types so it can replace ``trace`` in a loop), scored with normal sites batched:
        the kernels' position protocol writes its traces with it."""
        with batched():
            new, _ = self.write(trace, u)
        return cast_like(new, trace)

    def log_density(self, trace, u):
        """Log density of ``u`` given the other choices of ``trace`` (differentiable in ``u``).
        Only the total is needed, so normal sites are scored together (:class:`ppl.scores.batched`)."""
        with batched():
            return self.write(trace, u)[1]

    def potential(self, trace):
        """``u -> -log density`` (NumPyro's potential-energy convention)."""
        return lambda u: -self.log_density(trace, u)
