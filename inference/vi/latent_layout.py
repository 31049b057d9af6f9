"""The latent sites of a model and their unconstrained layout (used by the automatic guides).

:func:`latent_layout` runs ``model.generate(key, observations, params, *args)`` abstractly (under
``jax.eval_shape``, with a traced key) while a :class:`ppl.core.Interceptor` records every site:
sites given by ``observations`` are observed, every site that samples is a *latent* site. For each
latent site it records the address, the shape of its choice (combinator copy/time axes included),
its support and the bijection ``T = numpyro.distributions.transforms.biject_to(support)`` from
unconstrained space. Constants (model arguments, observations, parameters) are evaluated while
tracing, so a support built from them (``uniform(0.0, xs.max())``) is known; a support that depends
on another latent choice (``uniform(0.0, s)`` with a sampled ``s``) is not, and is an error.

The latents are laid out as one flat unconstrained vector ``u`` of length ``dim`` (sites in
depth-first order of their addresses, each site's first visit first). :meth:`LatentLayout.constrain`
maps ``u`` (with any leading batch axes) to a :class:`ppl.ChoiceMap` of constrained values.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def model(params):
    ...     s = ppl.gamma(2.0, 1.0) @ "s"
    ...     return ppl.normal(jnp.zeros(3), s) @ "x"
    >>> lay = latent_layout(model, ppl.ChoiceMap({"x": jnp.ones(3)}), (), None, "example")
    >>> [(site.path, site.shape, site.size) for site in lay.sites], lay.dim
    ([(('s',), (), 1)], 1)
    >>> float(lay.constrain(jnp.zeros(1))["s"])
    1.0
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from ppl.choicemap import ChoiceMap, Masked
from ppl.core import GenerativeFunction, Interceptor, as_args_tuple, as_choicemap, intercept
from ppl.errors import ModelError, fmt_addr

__all__ = ["LatentSite", "LatentLayout", "latent_layout"]


@dataclasses.dataclass(frozen=True, eq=False)
class LatentSite:
    """One latent site: ``path``, constrained ``shape``, ``unconstrained_shape``, position
    ``offset:offset + size`` in the flat vector, ``support`` and ``transform`` (``biject_to``)."""

    path: tuple
    shape: tuple
    unconstrained_shape: tuple
    offset: int
    size: int
    support: Any
    transform: Any
    family: str

    @property
    def slice(self):
        return slice(self.offset, self.offset + self.size)

    def block(self, u):
        """The site's unconstrained value from flat ``u`` (leading batch axes kept)."""
        u = jnp.asarray(u)
        return jnp.reshape(u[..., self.slice], u.shape[:-1] + self.unconstrained_shape)

    def log_abs_det_jacobian(self, u_block, x):
        """``log |det dT/du|`` summed over the site (leading batch axes of ``u_block`` kept)."""
        ldj = jnp.asarray(self.transform.log_abs_det_jacobian(u_block, x))
        n_batch = jnp.ndim(u_block) - len(self.unconstrained_shape)
        return jnp.sum(ldj, axis=tuple(range(n_batch, jnp.ndim(ldj))))


class _Recorder(Interceptor):
    """Records the sites a model samples (latent) and the sites it is given (observed)."""

    def __init__(self):
        self.latent: dict = {}
        self.observed: set = set()

    def sample(self, path, gf, d, key):
        self.latent.setdefault(path, (gf, d))
        return gf.draw(d, key)

    def observe(self, path, gf, d, value, old_value):
        self.observed.add(path)
        return value, 0.0, old_value


def _traced_in(c, depth=0) -> bool:
    """Whether constraint ``c`` holds a traced (value-dependent) parameter."""
    if depth > 8:
        return False
    for v in vars(c).values() if hasattr(c, "__dict__") else ():
        if isinstance(v, jax.core.Tracer):
            return True
        if isinstance(v, constraints.Constraint) and _traced_in(v, depth + 1):
            return True
    return False


def _dfs_order(paths):
    """Paths grouped by prefix (depth-first), each group at its first visit: nested guides need
    the choices of one sub-address contiguous."""
    tree: dict = {}
    for p in paths:
        node = tree
        for part in p:
            node = node.setdefault(part, {})
    out = []

    def walk(node, prefix):
        for name, child in node.items():
            if child:
                walk(child, prefix + (name,))
            else:
                out.append(prefix + (name,))

    walk(tree, ())
    return out


class LatentLayout:
    """The latent sites of a model and the flat unconstrained vector that holds them."""

    def __init__(self, sites):
        self.sites = tuple(sites)
        self.dim = sum(s.size for s in self.sites)
        self.paths = tuple(s.path for s in self.sites)

    def constrain(self, u, with_log_det: bool = False):
        """Flat unconstrained ``u`` (shape ``(..., dim)``) -> ChoiceMap of constrained values with the
        same leading axes (and the summed log-Jacobian of ``T`` if ``with_log_det``)."""
        u = jnp.asarray(u)
        leaves, ldj = [], jnp.zeros(u.shape[:-1])
        for s in self.sites:
            ub = s.block(u)
            x = s.transform(ub)
            leaves.append((s.path, x))
            if with_log_det:
                ldj = ldj + s.log_abs_det_jacobian(ub, x)
        chm = ChoiceMap(dict(leaves))
        return (chm, ldj) if with_log_det else chm

    def unconstrain(self, choices):
        """ChoiceMap (or dict) of constrained values at every latent address -> flat ``u``."""
        choices = as_choicemap(choices, "unconstrain: choices")
        parts = []
        for s in self.sites:
            if s.path not in choices:
                raise ModelError(f"no value for the latent address {fmt_addr(s.path)}; give every latent "
                                 f"site (the latent addresses are {[_show(p) for p in self.paths]})")
            x = jnp.asarray(choices[s.path], dtype=jnp.float32)
            if tuple(x.shape) != s.shape:
                raise ModelError(f"the value at {fmt_addr(s.path)} has shape {tuple(x.shape)}, but the "
                                 f"site has shape {s.shape}")
            parts.append(jnp.reshape(s.transform.inv(x), (-1,)))
        return jnp.concatenate(parts) if parts else jnp.zeros((0,))


def _show(path):
    return path[0] if len(path) == 1 else path


def latent_layout(model, observations, model_args, model_params, who: str) -> LatentLayout:
    """Discover the latent sites of ``model(model_params, *model_args)`` given ``observations``
    (see the module docstring); raises :class:`ppl.ModelError` naming the address of a site that
    an automatic guide cannot cover (discrete, conditionally present, partially observed, or with
    a support that depends on other choices)."""
    if not isinstance(model, GenerativeFunction):
        raise TypeError(f"{who}: model must be a ppl generative function (@ppl.gen), got {model!r}")
    observations = as_choicemap(observations, f"{who}: observations")
    model_args = as_args_tuple(model_args, who, "model_args")

    def trace(constants: bool):
        rec = _Recorder()

        def run(key):
            with contextlib.ExitStack() as stack:
                if constants:  # evaluate constant expressions (supports from arguments) while tracing
                    stack.enter_context(jax.ensure_compile_time_eval())
                stack.enter_context(intercept(rec))
                tr, _ = model.generate(key, observations, model_params, *model_args)
            return tr.get_choices()

        return rec, jax.eval_shape(run, jax.random.key(0))

    try:
        # a purely abstract pass first; only if a latent support holds a traced parameter, a second
        # pass that evaluates constants op by op tells a support built from arguments (known) from
        # one that depends on other choices
        rec, choices = trace(False)
        if any(_traced_in(d.support) for _, d in rec.latent.values()):
            rec, choices = trace(True)
    except ModelError:
        raise
    except Exception as e:  # e.g. the model reads its params and got model_params=None
        raise ModelError(
            f"{who}: could not trace the model {getattr(model, 'name', model)!r} to find its latent sites "
            f"({type(e).__name__}: {e}). The model is called as model(model_params, *model_args); pass "
            "model_params= (parameters of the same structure as in training) and model_args=."
        ) from e
    leaves = dict(choices.leaves())
    sites, offset = [], 0
    for path in _dfs_order(list(rec.latent)):
        gf, d = rec.latent[path]
        name = getattr(gf, "name", type(d).__name__)
        where = f"{who}: the latent site at address {fmt_addr(path)} ({name})"
        if path in rec.observed:
            raise ModelError(f"{where} is partially observed (a masked observation); automatic guides "
                             "cover fully latent sites only. Write a hand-written guide for the missing values.")
        leaf = leaves.get(path)
        if isinstance(leaf, Masked) or leaf is None:
            raise ModelError(f"{where} is inside a ppl.cond/switch/mix branch (present only on some "
                             "executions); automatic guides need every latent site on every execution. "
                             "Write a hand-written guide for the branching part.")
        support = d.support
        if getattr(support, "is_discrete", False):
            raise ModelError(f"{where} is discrete; automatic guides cover continuous latent sites only. "
                             "Write a hand-written guide that samples it (with estimator=vi.enum for exact "
                             "enumeration, or vi.reinforce), or marginalize it out of the model.")
        if _traced_in(support):
            raise ModelError(f"{where} has a support that depends on other random choices ({support}); "
                             "automatic guides need a fixed support. Reparameterize the model (e.g. sample "
                             "u ~ uniform(0, 1) and use s * u) or write a hand-written guide.")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ModelError(f"{where} has non-float values ({leaf.dtype}); automatic guides need "
                             "continuous sites.")
        try:
            t = biject_to(support)
        except NotImplementedError as e:
            raise ModelError(f"{where}: no bijection to its support {support} is known to numpyro "
                             "(biject_to); write a hand-written guide for it.") from e
        shape = tuple(leaf.shape)
        ushape = tuple(t.inverse_shape(shape))
        size = int(np.prod(ushape, dtype=np.int64))
        sites.append(LatentSite(path, shape, ushape, offset, size, support, t, name))
        offset += size
    if not sites:
        raise ModelError(f"{who}: the model has no latent sites given these observations (every site "
                         "is observed); there is nothing to infer.")
    return LatentLayout(sites)
