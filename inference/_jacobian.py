"""``log |det J|`` over the *present continuous coordinates* of choice maps (internal).

Moves that map choices through a deterministic JAX function (``mcmc.involutive``, ``smc.move``)
need the log absolute Jacobian determinant of that map. Its coordinates are the floating-point
leaves of the choice maps involved, flattened into one vector; discrete leaves are held constant
(counting measure). A leaf may be a :class:`ppl.Masked` value (a choice of a
``ppl.cond``/``ppl.switch`` branch under ``jit``, or a masked constraint): it is a coordinate only
where its flag holds, the flag being broadcast to the value's shape. The value of an absent entry
is arbitrary (an untaken branch), so the determinant is taken over the block of present rows and
columns only, the rest replaced by the identity: absent values and their derivatives never enter.

The pieces (each a plain function of JAX values):

- :func:`raw`, :func:`presence`, :func:`is_continuous`: a leaf's value, its elementwise presence,
  whether it is a coordinate at all;
- :func:`flatten` / :func:`unflatten`: between a list of arrays and one flat vector (for
  :func:`jax.jacfwd`), also used to concatenate presence masks;
- :func:`masked_logabsdet`: ``log |det|`` of a Jacobian's present block.

A choice map is rebuilt from ``(path, leaf)`` pairs with :meth:`ppl.ChoiceMap.from_leaves` (the
inverse of ``ChoiceMap.leaves()``; ``from_leaves`` here is the same function).

Example (polar to Cartesian coordinates, ``|det J| = r``, with a third, absent coordinate whose
garbage value and derivative are left out):
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import _jacobian as jac
    >>> chm = ppl.ChoiceMap({"r": 2.0, "theta": 0.3, "k": 1, "junk": ppl.Masked(7.0, False)})
    >>> coords = [(p, v) for p, v in chm.leaves() if jac.is_continuous(v)]   # sorted: junk, r, theta
    >>> x = jac.flatten([jac.raw(v) for _, v in coords])
    >>> def polar(x):
    ...     new = jac.unflatten(x, [jac.raw(v) for _, v in coords])
    ...     c = ppl.ChoiceMap.from_leaves([(p, a) for (p, _), a in zip(coords, new)])
    ...     return jnp.stack([c["junk"] ** 3, c["r"] * jnp.cos(c["theta"]), c["r"] * jnp.sin(c["theta"])])
    >>> mask = jac.flatten([jac.presence(v) for _, v in coords], bool)
    >>> mask.tolist()
    [False, True, True]
    >>> ld = jac.masked_logabsdet(jax.jacfwd(polar)(x), mask, mask)
    >>> bool(jnp.isclose(ld, jnp.log(2.0)))
    True
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap, Masked

__all__ = ["raw", "presence", "is_continuous", "flatten", "unflatten", "masked_logabsdet", "from_leaves"]

from_leaves = ChoiceMap.from_leaves  # the one (path, leaf) builder, re-exported for the moves


def raw(leaf):
    """The value of a choice-map leaf: a ``Masked`` leaf's value whatever its flag, else the leaf.

    Examples:
        >>> import ppl
        >>> raw(ppl.Masked(1.5, False)), raw(2.0)
        (1.5, 2.0)
    """
    return leaf.value if isinstance(leaf, Masked) else leaf


def presence(leaf):
    """Elementwise presence of a (possibly ``Masked``) leaf: a boolean array shaped like its value.

    A ``Masked`` flag's shape is a prefix of the value's shape (one flag per leading index); it is
    broadcast over the trailing axes. A plain leaf is present everywhere.

    Examples:
        >>> import jax.numpy as jnp, ppl
        >>> presence(ppl.Masked(jnp.zeros((2, 3)), jnp.array([True, False]))).tolist()
        [[True, True, True], [False, False, False]]
        >>> presence(jnp.zeros(2)).tolist()
        [True, True]
    """
    if not isinstance(leaf, Masked):
        return jnp.ones(jnp.shape(leaf), bool)
    val, flag = jnp.asarray(leaf.value), jnp.asarray(leaf.flag, bool)
    flag = jnp.reshape(flag, flag.shape + (1,) * (val.ndim - flag.ndim))
    return jnp.broadcast_to(flag, val.shape)


def is_continuous(leaf) -> bool:
    """Whether a (possibly ``Masked``) leaf holds real floating-point values (Jacobian coordinates);
    integer and boolean leaves are discrete.

    Examples:
        >>> import jax.numpy as jnp, ppl
        >>> is_continuous(jnp.float32(1.0)), is_continuous(ppl.Masked(jnp.int32(1), True))
        (True, False)
    """
    return bool(jnp.issubdtype(jnp.result_type(raw(leaf)), jnp.floating))


def flatten(values, dtype=None):
    """The arrays ``values`` raveled and concatenated into one vector of ``dtype`` (default: their
    promoted type); an empty list gives an empty vector (of ``dtype``, default ``float32``).

    Examples:
        >>> import jax.numpy as jnp
        >>> flatten([jnp.ones((2, 2)), jnp.float32(3.0)]).tolist()
        [1.0, 1.0, 1.0, 1.0, 3.0]
        >>> flatten([], bool).shape
        (0,)
    """
    vals = [jnp.ravel(v) for v in values]
    if not vals:
        return jnp.zeros((0,), jnp.float32 if dtype is None else dtype)
    if dtype is None:
        dtype = jnp.result_type(*vals)
    return jnp.concatenate([jnp.asarray(v, dtype) for v in vals])


def unflatten(x, likes) -> list:
    """The inverse of :func:`flatten`: consecutive slices of the vector ``x`` reshaped like the
    arrays ``likes`` and cast to their dtypes (``x`` may be longer; the rest is ignored).

    Examples:
        >>> import jax.numpy as jnp
        >>> a, b = unflatten(jnp.arange(5.0), [jnp.zeros((2, 2)), jnp.float32(0.0)])
        >>> a.tolist(), float(b)
        ([[0.0, 1.0], [2.0, 3.0]], 4.0)
    """
    out, i = [], 0
    for like in likes:
        n = int(np.prod(jnp.shape(like)))
        out.append(jnp.reshape(x[i:i + n], jnp.shape(like)).astype(jnp.result_type(like)))
        i += n
    return out


def masked_logabsdet(jac, in_mask=None, out_mask=None):
    """``log |det|`` of the block of ``jac`` (outputs x inputs) at present rows and columns.

    ``in_mask`` (length ``jac.shape[1]``) and ``out_mask`` (length ``jac.shape[0]``) flag the
    present inputs and outputs (``None``: all present). Present rows/columns are moved first (in
    order) and the matrix is padded to a square whose absent block is the identity, so the result
    is the present block's determinant whatever the values elsewhere. When the numbers of present
    rows and columns differ the padded matrix is singular: ``-inf`` (the map is not a bijection of
    the present coordinates). With no masks and a square ``jac`` this is ``slogdet(jac)``; a
    ``0 x 0`` Jacobian gives ``0.0`` (float32). The result has ``jac``'s dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> J = jnp.array([[2.0, 5.0], [0.0, 9.0]])           # row and column 1 absent
        >>> m = jnp.array([True, False])
        >>> float(masked_logabsdet(J, m, m)) == float(jnp.log(2.0))
        True
        >>> float(masked_logabsdet(J, m, jnp.array([True, True])))
        -inf
    """
    m, n = jac.shape
    size = max(m, n)
    if size == 0:
        return jnp.zeros((), jnp.float32)
    if in_mask is None and out_mask is None and m == n:
        return jnp.linalg.slogdet(jac)[1]
    in_mask = jnp.ones((n,), bool) if in_mask is None else in_mask
    out_mask = jnp.ones((m,), bool) if out_mask is None else out_mask
    full = jnp.zeros((size, size), jac.dtype).at[:m, :n].set(jac)
    rows = jnp.zeros((size,), bool).at[:m].set(out_mask)
    cols = jnp.zeros((size,), bool).at[:n].set(in_mask)
    rperm = jnp.argsort(jnp.logical_not(rows), stable=True)
    cperm = jnp.argsort(jnp.logical_not(cols), stable=True)
    perm = full[rperm][:, cperm]
    k_r, k_c = jnp.sum(rows), jnp.sum(cols)
    i = jnp.arange(size)
    block = (i[:, None] < k_r) & (i[None, :] < k_c)
    eye_part = (i[:, None] == i[None, :]) & (i[:, None] >= k_r) & (i[None, :] >= k_c)
    mat = jnp.where(block, perm, jnp.where(eye_part, 1.0, 0.0).astype(jac.dtype))
    return jnp.linalg.slogdet(mat)[1]
