"""Automatic guides: variational families built from a model (NumPyro's autoguides).

``guide = vi.AutoNormal(model, observations, model_args)`` traces the model abstractly to find its
latent sites (the sites that ``observations`` do not constrain; see
:mod:`inference.vi.latent_layout`) and builds a generative function ``guide(params)`` with one
choice at every latent address, so it is the guide of every objective
(``vi.elbo(model, guide)``, ``vi.iwelbo(model, guide, K)``, ``vi.rws``, ...). The family lives in
the unconstrained space of the latents: a positive site is ``exp(u)``, a unit-interval site
``sigmoid(u)``, a simplex site stick-breaking of ``u`` (``numpyro ... biject_to(support)``), and the
guide's density includes the log-Jacobian of that map, so it is the density of the constrained
value the model sees.

- :class:`AutoNormal`: independent normals, ``u ~ N(loc, diag(scale^2))``.
- :class:`AutoMultivariateNormal`: ``u ~ N(loc, L L^T)`` (full covariance).
- :class:`AutoLowRankMultivariateNormal`: ``u ~ N(loc, W W^T + diag(scale^2))``, ``W`` of ``rank``
  columns.
- :class:`AutoDelta`: a point mass at ``T(loc)`` with density 1: the ELBO is ``log p(x, z)``, so
  fitting it is MAP in the *constrained* space (as NumPyro's ``AutoDelta``).
- :class:`AutoLaplaceApproximation`: fitted as a point mass whose density is the inverse Jacobian,
  i.e. MAP of the density of ``u``; then ``get_posterior`` is ``N(loc, H^{-1})`` with ``H`` the
  Hessian of ``-log p(x, T(u)) - log|det J_T(u)|`` at the mode.

Parameters are a dict of float arrays over the flat unconstrained vector (``latent_dim``
entries, sites in the order of ``guide.latent_paths``): ``auto_loc`` and, stored unconstrained,
``auto_scale`` (``softplus`` gives the scale), ``auto_scale_tril`` (strictly lower part as is,
``softplus`` of the diagonal), ``auto_cov_factor``. The model receives the same ``params`` (the
objectives' convention), so a model with its own parameters reads its own keys of one merged dict:
``{**guide.init_params(key), "w": w0}``.

Every guide has ``init_params(key, init_values=None)``, ``get_posterior(params)`` (a numpyro
distribution of ``u``), ``sample_posterior(key, params, n)`` (a ChoiceMap of constrained choices
with a leading axis ``n``), ``median(params)`` and ``quantiles(params, qs)``.

Examples:
    >>> import jax, jax.numpy as jnp, optax, ppl
    >>> from inference import vi
    >>> @ppl.gen
    ... def model(params):
    ...     z = ppl.normal(0.0, 1.0) @ "z"
    ...     return ppl.normal(z, 1.0) @ "x"
    >>> obs = ppl.ChoiceMap({"x": 1.0})
    >>> guide = vi.AutoNormal(model, obs)
    >>> res = vi.fit(jax.random.key(0), vi.elbo(model, guide), guide.init_params(jax.random.key(1)),
    ...              optax.adam(0.05), 600, obs, progress=False)
    >>> bool(abs(guide.median(res.params)["z"] - 0.5) < 0.1)      # exact posterior N(0.5, 0.5)
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from jax.scipy.linalg import solve_triangular
from numpyro.distributions.transforms import ReshapeTransform

import ppl
from ppl.choicemap import ChoiceMap
from ppl.core import GenerativeFunction, as_args_tuple, as_choicemap
from ppl.errors import ModelError, fmt_addr

from .latent_layout import LatentLayout, latent_layout

__all__ = ["AutoGuide", "AutoNormal", "AutoMultivariateNormal", "AutoLowRankMultivariateNormal", "AutoDelta",
           "AutoLaplaceApproximation"]


def _softplus_inv(y):
    y = jnp.asarray(y, jnp.float32)
    return y + jnp.log(-jnp.expm1(-y))


def _tril_scale(raw):
    """Lower-triangular factor from an unconstrained square matrix: strict lower part as is,
    softplus of the diagonal."""
    return jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(jnp.diagonal(raw)))


class AutoGuide(GenerativeFunction):
    """Base class of the automatic guides: the latent layout of ``model`` and ``guide(params)``.

    Subclasses define ``_param_shapes`` (besides ``auto_loc``), ``_init_extra``, ``_init_state``,
    ``_site(params, state, site) -> (distribution, advance)`` (the guide's distribution of the
    site's constrained value given the sites before it, and ``advance(x) -> new state``),
    ``get_posterior`` and ``_marginal_scale``.
    """

    def __init__(self, model, observations=None, model_args=(), *, model_params=None, init_scale: float = 0.1):
        who = type(self).__name__
        if not (float(init_scale) > 0):
            raise ModelError(f"{who}: init_scale must be positive, got {init_scale!r}")
        self.model = model
        self.observations = as_choicemap(observations, f"{who}: observations")
        self.model_args = as_args_tuple(model_args, who, "model_args")
        self.init_scale = float(init_scale)
        self.layout: LatentLayout = latent_layout(model, self.observations, self.model_args, model_params, who)
        self.name = f"{who}({getattr(model, 'name', 'model')})"
        self._gen = self._build()

    # -- layout ---------------------------------------------------------------------------------
    @property
    def latent_paths(self) -> tuple:
        """Addresses of the latent sites, in the order of the flat unconstrained vector."""
        return self.layout.paths

    @property
    def latent_dim(self) -> int:
        """Length of the flat unconstrained vector ``u``."""
        return self.layout.dim

    def constrain(self, u) -> ChoiceMap:
        """Flat unconstrained ``u`` (shape ``(..., latent_dim)``) -> ChoiceMap of constrained values."""
        return self.layout.constrain(u)

    def unconstrain(self, choices):
        """ChoiceMap of constrained values at the latent addresses -> flat unconstrained vector."""
        return self.layout.unconstrain(choices)

    # -- parameters -----------------------------------------------------------------------------
    def init_params(self, key, init_values=None) -> dict:
        """Initial parameters. ``auto_loc`` is uniform in ``(-2, 2)`` in unconstrained space
        (NumPyro's ``init_to_uniform``) except at the addresses of ``init_values`` (a ChoiceMap or
        dict of constrained values), which start there; scales start at ``init_scale``."""
        k1, k2 = jax.random.split(key)
        loc = jax.random.uniform(k1, (self.latent_dim,), jnp.float32, -2.0, 2.0)
        if init_values is not None:
            init_values = as_choicemap(init_values, f"{type(self).__name__}.init_params: init_values")
            known = {p for p, _ in init_values.leaves()}
            for p in known:
                if p not in self.latent_paths:
                    raise ModelError(f"{type(self).__name__}.init_params: init_values names {fmt_addr(p)}, which "
                                     f"is not a latent address (those are {list(self.latent_paths)})")
            for s in self.layout.sites:
                if s.path in known:
                    x = jnp.asarray(init_values[s.path], jnp.float32)
                    loc = loc.at[s.slice].set(jnp.reshape(s.transform.inv(jnp.broadcast_to(x, s.shape)), (-1,)))
        params = {"auto_loc": loc}
        params.update(self._init_extra(k2))
        return params

    def _init_extra(self, key) -> dict:
        return {}

    def _check_params(self, params):
        if not isinstance(params, dict) or "auto_loc" not in params:
            raise ModelError(f"{self.name}: params must be the dict from guide.init_params(key) (possibly "
                             f"merged with the model's parameters), got {type(params).__name__}")
        return params

    # -- the generative function ----------------------------------------------------------------
    def _init_state(self, params):
        return None

    def _site(self, params, state, site):
        raise NotImplementedError

    def _visit(self, children, params, state):
        for name, child in children:
            if isinstance(child, GenerativeFunction):
                state = child(params, state) @ name
            else:
                d, advance = self._site(params, state, child)
                state = advance(ppl.dist(d) @ name)
        return state

    def _build(self):
        """One ``@gen`` function per address prefix (the guide's choices nest like the model's)."""
        tree: dict = {}
        for s in self.layout.sites:
            node = tree
            for part in s.path[:-1]:
                node = node.setdefault(part, {})
            node[s.path[-1]] = s

        def children_of(node, prefix):
            out = []
            for name, child in node.items():
                out.append((name, child if not isinstance(child, dict) else sub_gen(child, prefix + (name,))))
            return out

        def sub_gen(node, prefix):
            children = children_of(node, prefix)

            def sub(params, state):
                return self._visit(children, params, state)

            sub.__name__ = f"{self.name}/{'/'.join(prefix)}"
            return ppl.gen(sub)

        top = children_of(tree, ())

        def guide(params):
            self._visit(top, self._check_params(params), self._init_state(params))
            return None

        guide.__name__ = self.name
        return ppl.gen(guide)

    def _simulate(self, key, params):
        return self._gen.simulate(key, params)

    def _assess(self, choices, params):
        return self._gen.assess(choices, params)

    def _generate(self, key, constraints, params):
        return self._gen.generate(key, constraints, params)

    def _update(self, key, trace, constraints, params):
        return self._gen.update(key, trace, constraints, params)

    def _regenerate(self, key, trace, selection, params):
        return self._gen.regenerate(key, trace, selection, params)

    # -- posterior summaries --------------------------------------------------------------------
    def get_posterior(self, params):
        """The guide's distribution of the flat unconstrained vector ``u`` (a numpyro distribution)."""
        raise NotImplementedError

    def _marginal_scale(self, params):
        """Standard deviations of the entries of ``u``."""
        raise NotImplementedError

    def sample_posterior(self, key, params, n: int) -> ChoiceMap:
        """``n`` draws from the guide: a ChoiceMap of constrained values with a leading axis ``n``.

        Examples:
            >>> import jax, jax.numpy as jnp, ppl
            >>> from inference import vi
            >>> @ppl.gen
            ... def model(params):
            ...     return ppl.normal(ppl.gamma(2.0, 1.0) @ "s", 1.0) @ "x"
            >>> guide = vi.AutoNormal(model, {"x": 1.0})
            >>> draws = guide.sample_posterior(jax.random.key(0), guide.init_params(jax.random.key(1)), 100)
            >>> draws["s"].shape, bool(jnp.all(draws["s"] > 0))
            ((100,), True)
        """
        n = _count(n, f"{self.name}.sample_posterior")
        u = self.get_posterior(self._check_params(params)).sample(key, (n,))
        return self.constrain(u)

    def median(self, params) -> ChoiceMap:
        """``T(loc)``: the guide's median of every latent site (each ``T`` is monotone per entry)."""
        return self.constrain(self._check_params(params)["auto_loc"])

    def quantiles(self, params, qs) -> ChoiceMap:
        """Marginal quantiles ``T(loc + sd * Phi^{-1}(q))`` of every latent site, with a leading axis
        ``len(qs)`` (exact per entry for elementwise supports; for a simplex site they are the
        transforms of the unconstrained quantiles, as in NumPyro)."""
        params = self._check_params(params)
        qs = jnp.asarray(qs, jnp.float32)
        if qs.ndim != 1:
            raise ModelError(f"{self.name}.quantiles: qs must be a 1-d list of probabilities, got shape {qs.shape}")
        z = jax.scipy.special.ndtri(qs)[:, None]
        return self.constrain(params["auto_loc"] + z * self._marginal_scale(params))

    def __repr__(self):
        return f"<{self.name}: {len(self.layout.sites)} latent sites, {self.latent_dim} unconstrained dims>"


def _count(n, where):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ModelError(f"{where}: n must be a positive int, got {n!r}")
    return int(n)


def _transformed(base, site):
    """Distribution of ``T(reshape(v))`` for ``v ~ base`` (flat, event shape ``(size,)``)."""
    return nd.TransformedDistribution(base, [ReshapeTransform(site.unconstrained_shape, (site.size,)), site.transform])


def _unconstrained_block(site, x):
    return jnp.reshape(site.transform.inv(x), (site.size,))


class AutoNormal(AutoGuide):
    """Independent normals in unconstrained space: ``u_i ~ N(loc_i, scale_i^2)``.

    Params: ``auto_loc`` and ``auto_scale`` (unconstrained: ``scale = softplus(auto_scale)``),
    both of length ``latent_dim``.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.normal(jnp.zeros(2), 1.0) @ "z", 1.0) @ "x"
        >>> guide = vi.AutoNormal(model, {"x": jnp.ones(2)})
        >>> p = guide.init_params(jax.random.key(0))
        >>> sorted(p), p["auto_loc"].shape, guide.latent_paths
        (['auto_loc', 'auto_scale'], (2,), (('z',),))
        >>> guide.simulate(jax.random.key(1), p).choices["z"].shape
        (2,)
    """

    def _init_extra(self, key):
        return {"auto_scale": jnp.full((self.latent_dim,), _softplus_inv(self.init_scale))}

    def _scale(self, params):
        return jax.nn.softplus(params["auto_scale"])

    def _site(self, params, state, site):
        base = nd.Normal(params["auto_loc"][site.slice], self._scale(params)[site.slice]).to_event(1)
        return _transformed(base, site), lambda x: state

    def get_posterior(self, params):
        return nd.Normal(params["auto_loc"], self._scale(params)).to_event(1)

    def _marginal_scale(self, params):
        return self._scale(params)


class AutoMultivariateNormal(AutoGuide):
    """A full-covariance normal in unconstrained space: ``u ~ N(loc, L L^T)``.

    Params: ``auto_loc`` and ``auto_scale_tril`` (``L = tril(auto_scale_tril, -1) +
    diag(softplus(diag(auto_scale_tril)))``). The guide samples site by site from the conditional
    normals of ``N(loc, L L^T)``, so each latent address holds its own choice.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     a = ppl.normal(0.0, 1.0) @ "a"
        ...     return ppl.normal(a + ppl.normal(0.0, 1.0) @ "b", 1.0) @ "x"
        >>> guide = vi.AutoMultivariateNormal(model, {"x": 1.0})
        >>> p = guide.init_params(jax.random.key(0))
        >>> p["auto_scale_tril"].shape
        (2, 2)
        >>> bool(jnp.allclose(guide.get_posterior(p).covariance_matrix, 0.01 * jnp.eye(2)))
        True
    """

    def _init_extra(self, key):
        return {"auto_scale_tril": jnp.diag(jnp.full((self.latent_dim,), _softplus_inv(self.init_scale)))}

    def scale_tril(self, params):
        """The lower-triangular factor ``L`` of the covariance."""
        return _tril_scale(params["auto_scale_tril"])

    def _init_state(self, params):
        # the standardized draws eps so far
        return jnp.zeros((self.latent_dim,), jnp.result_type(params["auto_loc"], jnp.float32))

    def _site(self, params, eps, site):
        L = self.scale_tril(params)
        rows = L[site.slice]
        L_kk = rows[:, site.slice]
        mean = params["auto_loc"][site.slice] + rows @ eps  # eps is zero from this site on
        d = _transformed(nd.MultivariateNormal(mean, scale_tril=L_kk), site)

        def advance(x):
            e = solve_triangular(L_kk, _unconstrained_block(site, x) - mean, lower=True)
            return eps.at[site.slice].set(e)

        return d, advance

    def get_posterior(self, params):
        return nd.MultivariateNormal(params["auto_loc"], scale_tril=self.scale_tril(params))

    def _marginal_scale(self, params):
        return jnp.linalg.norm(self.scale_tril(params), axis=-1)


class AutoLowRankMultivariateNormal(AutoGuide):
    """A low-rank-plus-diagonal normal in unconstrained space: ``u ~ N(loc, W W^T + diag(scale^2))``.

    ``rank`` columns in ``W`` (default ``round(sqrt(latent_dim))``, as NumPyro). Params:
    ``auto_loc``, ``auto_cov_factor`` (``W``, shape ``(latent_dim, rank)``) and ``auto_scale``
    (unconstrained: ``scale = softplus(auto_scale)``). Each site is sampled from its conditional
    given the sites before it, itself low-rank plus diagonal (Woodbury), so one guide run costs
    ``O(latent_dim * rank^2)``.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.normal(jnp.zeros(4), 1.0) @ "z", 1.0) @ "x"
        >>> guide = vi.AutoLowRankMultivariateNormal(model, {"x": jnp.ones(4)}, rank=1)
        >>> guide.init_params(jax.random.key(0))["auto_cov_factor"].shape
        (4, 1)
    """

    def __init__(self, model, observations=None, model_args=(), *, rank=None, model_params=None,
                 init_scale: float = 0.1):
        super().__init__(model, observations, model_args, model_params=model_params, init_scale=init_scale)
        if rank is None:
            rank = max(1, int(round(self.latent_dim ** 0.5)))
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ModelError(f"{type(self).__name__}: rank must be a positive int, got {rank!r}")
        self.rank = int(rank)

    def _init_extra(self, key):
        # NumPyro starts W at zero, a stationary point of the expected ELBO for Gaussian targets;
        # small random entries let every column start to learn from the first steps
        W = 0.1 * self.init_scale * jax.random.normal(key, (self.latent_dim, self.rank), jnp.float32)
        return {"auto_cov_factor": W, "auto_scale": jnp.full((self.latent_dim,), _softplus_inv(self.init_scale))}

    def _init_state(self, params):
        r, dt = self.rank, jnp.result_type(params["auto_cov_factor"], jnp.float32)
        return jnp.zeros((r,), dt), jnp.zeros((r, r), dt)

    def _site(self, params, state, site):
        a, A = state  # a = W_<^T D_<^-1 (u_< - loc_<), A = W_<^T D_<^-1 W_< over the earlier sites
        W = params["auto_cov_factor"][site.slice]
        var = jax.nn.softplus(params["auto_scale"][site.slice]) ** 2
        loc = params["auto_loc"][site.slice]
        # conditional of N(loc, W W^T + D) given the earlier blocks: mean loc_k + W_k M a, covariance
        # D_k + W_k M W_k^T with M = (I + A)^{-1}
        C = jnp.linalg.cholesky(jnp.eye(self.rank) + A)
        M_chol = solve_triangular(C, jnp.eye(self.rank), lower=True).T  # M = M_chol M_chol^T
        mean = loc + W @ (M_chol @ (M_chol.T @ a))
        d = _transformed(nd.LowRankMultivariateNormal(mean, W @ M_chol, var), site)

        def advance(x):
            r = (_unconstrained_block(site, x) - loc) / var
            return a + W.T @ r, A + W.T @ (W / var[:, None])

        return d, advance

    def get_posterior(self, params):
        return nd.LowRankMultivariateNormal(params["auto_loc"], params["auto_cov_factor"],
                                            jax.nn.softplus(params["auto_scale"]) ** 2)

    def _marginal_scale(self, params):
        W = params["auto_cov_factor"]
        return jnp.sqrt(jnp.sum(W**2, axis=-1) + jax.nn.softplus(params["auto_scale"]) ** 2)


class AutoDelta(AutoGuide):
    """A point mass at ``T(loc)`` (density 1 there): fitting ``vi.elbo`` is MAP estimation.

    As NumPyro's ``AutoDelta``, the objective is ``log p(x, z)`` at the constrained value ``z``, so
    the optimum is the mode of the posterior density *in the constrained space* (no Jacobian).
    :class:`AutoLaplaceApproximation` instead finds the mode of the density of the unconstrained
    ``u``. Params: ``auto_loc``. ``sample_posterior`` repeats the point; ``quantiles`` are the point.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.gamma(2.0, 1.0) @ "s", 1.0) @ "x"
        >>> guide = vi.AutoDelta(model, {"x": 1.0})
        >>> p = guide.init_params(jax.random.key(0), init_values={"s": 1.5})
        >>> float(guide.simulate(jax.random.key(1), p).choices["s"]), float(guide.simulate(jax.random.key(1), p).score)
        (1.5, 0.0)
    """

    _with_jacobian = False

    def _site(self, params, state, site):
        u = jnp.reshape(params["auto_loc"][site.slice], site.unconstrained_shape)
        x = site.transform(u)
        log_density = -site.log_abs_det_jacobian(u, x) if self._with_jacobian else 0.0
        return nd.Delta(x, log_density=log_density, event_dim=len(site.shape)), lambda v: state

    def get_posterior(self, params):
        return nd.Delta(self._check_params(params)["auto_loc"], event_dim=1)

    def _marginal_scale(self, params):
        return jnp.zeros((self.latent_dim,), jnp.float32)


class AutoLaplaceApproximation(AutoDelta):
    """Laplace approximation: MAP in unconstrained space, then a normal with the inverse Hessian.

    As a guide (for fitting) it is a point mass at ``T(loc)`` with log density
    ``-log|det J_T(loc)|``, so ``vi.elbo`` is ``log p(x, T(u)) + log|det J_T(u)|``, the log density of
    ``u``, and fitting finds its mode. :meth:`get_posterior` is then ``N(loc, H^{-1})`` with ``H``
    the Hessian of ``-log p(x, T(u)) - log|det J_T(u)|`` at ``loc`` (``jax.hessian`` of the model's
    ``assess`` with the guide's observations and model arguments); ``sample_posterior``,
    ``quantiles`` use it.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.normal(0.0, 1.0) @ "z", 0.5) @ "x"
        >>> guide = vi.AutoLaplaceApproximation(model, {"x": 1.0})
        >>> post = guide.get_posterior({"auto_loc": jnp.array([0.8])})     # exact: N(0.8, 0.2)
        >>> round(float(post.covariance_matrix[0, 0]), 5)
        0.2
    """

    _with_jacobian = True

    def hessian(self, params):
        """Hessian of ``-log p(x, T(u)) - log|det J_T(u)|`` in ``u`` at ``params["auto_loc"]``."""
        params = self._check_params(params)

        def potential(u):
            chm, ldj = self.layout.constrain(u, with_log_det=True)
            lp, _ = self.model.assess(chm | self.observations, params, *self.model_args)
            return -(lp + ldj)

        return jax.hessian(potential)(params["auto_loc"])

    def get_posterior(self, params):
        params = self._check_params(params)
        H = self.hessian(params)
        H = 0.5 * (H + H.T)
        chol = jnp.linalg.cholesky(H)
        if not isinstance(chol, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(chol))):
            raise ModelError(
                f"{self.name}: the Hessian of the negative log density at params['auto_loc'] is not positive "
                "definite, so that point is not a strict mode; fit longer (or with a smaller learning rate), "
                "or use AutoNormal / AutoMultivariateNormal.")
        # covariance H^{-1} = (C C^T)^{-1}: scale_tril = chol of H^{-1} from C^{-1}
        cov = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(self.latent_dim))
        return nd.MultivariateNormal(params["auto_loc"], covariance_matrix=0.5 * (cov + cov.T))

    def _marginal_scale(self, params):
        return jnp.sqrt(jnp.diagonal(self.get_posterior(params).covariance_matrix))
