"""Automatic guides (inference/vi/autoguide.py) against exact posteriors.

Optimization tests (``vi.fit``) check convergence to the exact conjugate answer within a stated
tolerance; exactness of the families themselves is checked without an optimizer: the guide's
density against the closed-form density of its Gaussian in unconstrained space (log-Jacobians
included), the expected ELBO gradient at the exact posterior (zero: a z-test over replicates, and
clearly non-zero at a perturbed point), the IWELBO at the exact posterior (``log p(x)`` exactly),
and the Laplace covariance (the exact posterior covariance of a linear-Gaussian model).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ppl
from inference import vi

SIG = 0.5

# ----------------------------------------------------------------------------- models
X_NN = jnp.array([1.0, -0.4, 2.0])


@ppl.gen
def normal_normal(params):
    z = ppl.normal(jnp.zeros(3), 1.0) @ "z"
    return ppl.normal(z, SIG) @ "x"


NN_OBS = ppl.ChoiceMap({"x": X_NN})
NN_MEAN = np.asarray(X_NN) / (1.0 + SIG**2)  # prior N(0, 1), likelihood N(z, 0.5^2): var 0.2
NN_VAR = 1.0 / (1.0 + 1.0 / SIG**2)
NN_LOGZ = float(jnp.sum(jax.scipy.stats.norm.logpdf(X_NN, 0.0, math.sqrt(1.0 + SIG**2))))

XR = jnp.array([[1.0, 0.5], [1.0, -1.0], [1.0, 2.0], [1.0, 0.0]])
YR = jnp.array([1.0, -0.5, 2.5, 0.3])


@ppl.gen
def regression(params):
    w = ppl.normal(jnp.zeros(2), 1.0) @ "w"
    return ppl.normal(XR @ w, SIG) @ "y"


REG_OBS = ppl.ChoiceMap({"y": YR})
_P = np.eye(2) + np.asarray(XR, np.float64).T @ np.asarray(XR, np.float64) / SIG**2
REG_COV = np.linalg.inv(_P)
REG_MEAN = REG_COV @ np.asarray(XR, np.float64).T @ np.asarray(YR, np.float64) / SIG**2
REG_LOGZ = float(jax.scipy.stats.multivariate_normal.logpdf(
    YR, jnp.zeros(4), SIG**2 * jnp.eye(4) + XR @ XR.T))

# a posterior whose covariance is exactly diagonal + rank one: prior N(0, D0 + v v^T) and one
# observation y ~ N(c.z, 1) with c = Sigma0^{-1} v, so that Sigma0 c = v and the update is along v
D0 = np.array([0.5, 1.0, 0.8])
V = np.array([1.0, -0.5, 0.7])
S0 = np.diag(D0) + np.outer(V, V)
C = np.linalg.solve(S0, V)
Q = float(V @ C)
Y1 = 1.3
LR_COV = np.diag(D0) + (Q / (1.0 + Q)) * np.outer(V, V)
LR_MEAN = V * Y1 / (1.0 + Q)


@ppl.gen
def rank_one(params):
    z = ppl.mv_normal(jnp.zeros(3), jnp.asarray(S0, jnp.float32)) @ "z"
    return ppl.normal(jnp.asarray(C, jnp.float32) @ z, 1.0) @ "y"


LR_OBS = ppl.ChoiceMap({"y": Y1})
LOGZ = {"normal": NN_LOGZ, "mvn": REG_LOGZ,
        "lowrank": float(jax.scipy.stats.norm.logpdf(Y1, 0.0, math.sqrt(1.0 + Q)))}  # var 1 + c' S0 c

# Gamma-Poisson: posterior Gamma(A + sum x, B + n)
GP_X = jnp.array([3, 1, 4, 2])
GP_ALPHA, GP_BETA = 2.0 + 10.0, 1.0 + 4.0


@ppl.gen
def gamma_poisson(params):
    lam = ppl.gamma(2.0, 1.0) @ "lam"
    z = ppl.normal(jnp.zeros(2), 1.0) @ "z"
    ppl.normal(z, SIG) @ "x"
    return ppl.poisson(jnp.full(4, lam)) @ "counts"


GP_OBS = ppl.ChoiceMap({"counts": GP_X, "x": jnp.array([0.5, -1.0])})


@ppl.gen
def _inner(params, scale):
    return ppl.half_normal(scale) @ "tau"


@ppl.gen
def mixed(params):
    """Latent sites of many kinds: real, positive, unit interval, simplex, a matrix, a nested call,
    a repeat combinator."""
    a = ppl.normal(0.0, 1.0) @ "a"
    s = ppl.gamma(2.0, 2.0) @ "s"
    p = ppl.beta(2.0, 3.0) @ "p"
    w = ppl.dirichlet(jnp.ones(3)) @ "w"
    m = ppl.normal(jnp.zeros((2, 2)), 1.0) @ "m"
    tau = _inner(params, 1.5) @ "sub"
    r = ppl.normal.repeat(4)(a, 1.0) @ "r"
    mean = a + s * p + jnp.sum(w * jnp.arange(3.0)) + jnp.sum(m) + tau + jnp.sum(r)
    return ppl.normal(mean, 1.0) @ "y"


MIXED_OBS = ppl.ChoiceMap({"y": 0.7})
MIXED_SHAPES = {("a",): (), ("s",): (), ("p",): (), ("w",): (3,), ("m",): (2, 2), ("sub", "tau"): (), ("r",): (4,)}

GAUSSIAN_GUIDES = [vi.AutoNormal, vi.AutoMultivariateNormal,
                   lambda *a, **k: vi.AutoLowRankMultivariateNormal(*a, rank=2, **k)]


def _softplus_inv(y):
    y = np.asarray(y, np.float64)
    return y + np.log(-np.expm1(-y))


def _random_params(guide, key):
    """Parameters with every entry non-trivial (random loc, scales, factors), the covariance well
    conditioned (scales near 0.5, off-diagonal entries near 0.1) so that float32 comparisons are tight."""
    p = guide.init_params(key)
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
    base = {"auto_loc": 0.0, "auto_scale": _softplus_inv(0.5), "auto_cov_factor": 0.0}
    out = {}
    for (name, x), k in zip(sorted(p.items()), keys):
        noise = 0.1 * jax.random.normal(k, x.shape)
        if name == "auto_scale_tril":
            out[name] = jnp.diag(jnp.full(x.shape[0], _softplus_inv(0.5), jnp.float32)) + jnp.tril(noise)
        else:
            out[name] = (x if name == "auto_loc" else base[name]) + noise
    del leaves, tree
    return out


# ----------------------------------------------------------------------------- structure and densities
@pytest.mark.parametrize("make", GAUSSIAN_GUIDES, ids=["normal", "mvn", "lowrank"])
def test_guide_density_is_the_gaussian_of_u_with_jacobians(make):
    """Many site kinds; the guide's log density (simulate score and assess) equals the density of
    its Gaussian at u = T^{-1}(choices) minus the log-Jacobians (exactly the constrained density)."""
    guide = make(mixed, MIXED_OBS)
    assert {s.path: s.shape for s in guide.layout.sites} == MIXED_SHAPES
    assert guide.latent_dim == 1 + 1 + 1 + 2 + 4 + 1 + 4          # the simplex loses one coordinate
    params = _random_params(guide, jax.random.key(0))

    @jax.jit
    def run(key, params):  # one program: the comparisons below cost one compilation
        tr = guide.simulate(key, params)
        u = guide.unconstrain(tr.choices)
        chm, ldj = guide.layout.constrain(u, with_log_det=True)
        lq, _ = guide.assess(tr.choices, params)
        lp, _ = mixed.assess(tr.choices | MIXED_OBS, params)
        return tr.choices, tr.score, chm, guide.get_posterior(params).log_prob(u) - ldj, lq, lp

    choices, score, chm, expected, lq, lp = run(jax.random.key(1), params)
    for path, shape in MIXED_SHAPES.items():
        assert choices[path].shape == shape
        np.testing.assert_allclose(chm[path], choices[path], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lq, expected, rtol=1e-5, atol=1e-4)
    assert np.isfinite(lp)          # the guide's choices are a complete latent assignment for the model
    assert float(jnp.sum(choices["w"])) == pytest.approx(1.0, abs=1e-5)
    assert 0 < float(choices["p"]) < 1 and float(choices["s"]) > 0 and float(choices["sub", "tau"]) > 0


def test_positive_site_density_by_hand():
    """One positive site: log q(lam) = log N(log lam; loc, scale) - log lam."""
    guide = vi.AutoNormal(gamma_poisson, GP_OBS)
    params = {"auto_loc": jnp.array([0.3, 0.1, -0.2]), "auto_scale": jnp.asarray(_softplus_inv([0.4, 0.5, 0.6]),
                                                                                   jnp.float32)}
    assert guide.latent_paths == (("lam",), ("z",))
    lam, z = 1.7, jnp.array([0.2, -0.3])
    lq, _ = guide.assess(ppl.ChoiceMap({"lam": lam, "z": z}), params)
    want = (jax.scipy.stats.norm.logpdf(math.log(lam), 0.3, 0.4) - math.log(lam)
            + jnp.sum(jax.scipy.stats.norm.logpdf(z, jnp.array([0.1, -0.2]), jnp.array([0.5, 0.6]))))
    np.testing.assert_allclose(lq, want, rtol=1e-6)


# ----------------------------------------------------------------------------- fitting: exact answers
def _fit(guide, model, obs, steps, lr, key=0, objective=None, final=0.02):
    obj = vi.elbo(model, guide) if objective is None else objective
    sched = optax.exponential_decay(lr, steps, final)
    return vi.fit(jax.random.key(key), obj, guide.init_params(jax.random.key(key + 100)), optax.adam(sched), steps,
                  obs, progress=False, chunk_size=steps // 4).params


def test_autonormal_fits_the_conjugate_normal_posterior():
    """Vector latent, independent exact posterior N(0.8 x, 0.2): 20000 single-sample ELBO steps
    with a decaying step size land within 0.05 of the mean (0.11 posterior sd) and 10% of the
    variance (observed: about 0.01 and 2%)."""
    guide = vi.AutoNormal(normal_normal, NN_OBS)
    p = _fit(guide, normal_normal, NN_OBS, 20000, 0.02)
    np.testing.assert_allclose(guide.median(p)["z"], NN_MEAN, atol=0.05)
    var = jax.nn.softplus(p["auto_scale"]) ** 2
    np.testing.assert_allclose(var, NN_VAR, rtol=0.1)


def test_automvn_fits_the_correlated_regression_posterior():
    """Bayesian linear regression with a conjugate prior: exact mean and full covariance
    (correlation -0.31). Tolerance: 0.05 on the mean (0.2 sd), 10% of the largest covariance entry
    on every entry (observed: under 0.02 and 2%)."""
    guide = vi.AutoMultivariateNormal(regression, REG_OBS)
    p = _fit(guide, regression, REG_OBS, 20000, 0.02)
    post = guide.get_posterior(p)
    np.testing.assert_allclose(post.mean, REG_MEAN, atol=0.05)
    np.testing.assert_allclose(post.covariance_matrix, REG_COV, atol=0.1 * np.abs(REG_COV).max())


def test_lowrank_rank_one_fits_a_rank_one_plus_diagonal_posterior():
    """rank = 1 holds the exact posterior D0 + (q / (1 + q)) v v^T. Trading the diagonal against the
    factor is a slow direction, so 60000 steps (about 2 s of run time); tolerance 0.1 on the mean and
    10% of the largest covariance entry (observed: 0.03 and 3%)."""
    guide = vi.AutoLowRankMultivariateNormal(rank_one, LR_OBS, rank=1)
    p = _fit(guide, rank_one, LR_OBS, 60000, 0.02)
    post = guide.get_posterior(p)
    np.testing.assert_allclose(post.mean, LR_MEAN, atol=0.1)
    np.testing.assert_allclose(post.covariance_matrix, LR_COV, atol=0.1 * np.abs(LR_COV).max())


def _exact_params(kind):
    if kind == "normal":
        return vi.AutoNormal(normal_normal, NN_OBS), normal_normal, NN_OBS, {
            "auto_loc": jnp.asarray(NN_MEAN, jnp.float32),
            "auto_scale": jnp.full(3, _softplus_inv(math.sqrt(NN_VAR)), jnp.float32)}
    if kind == "mvn":
        L = np.linalg.cholesky(REG_COV)
        raw = np.tril(L, -1) + np.diag(_softplus_inv(np.diag(L)))
        return vi.AutoMultivariateNormal(regression, REG_OBS), regression, REG_OBS, {
            "auto_loc": jnp.asarray(REG_MEAN, jnp.float32), "auto_scale_tril": jnp.asarray(raw, jnp.float32)}
    W = np.sqrt(Q / (1.0 + Q)) * V[:, None]
    return vi.AutoLowRankMultivariateNormal(rank_one, LR_OBS, rank=1), rank_one, LR_OBS, {
        "auto_loc": jnp.asarray(LR_MEAN, jnp.float32), "auto_cov_factor": jnp.asarray(W, jnp.float32),
        "auto_scale": jnp.asarray(_softplus_inv(np.sqrt(D0)), jnp.float32)}


@pytest.mark.parametrize("kind", ["normal", "mvn", "lowrank"])
def test_exact_posterior_is_a_stationary_point_of_the_elbo(kind):
    """At the exact posterior (in each family) the expected ELBO gradient is zero: every component
    of the mean of 2000 gradient estimates is within 4 standard errors of 0; moving the location by
    0.5 gives a gradient more than 8 standard errors away from 0 (the test can fail)."""
    guide, model, obs, p = _exact_params(kind)
    obj = vi.elbo(model, guide)
    keys = jax.random.split(jax.random.key(3), 2000)
    grads = jax.jit(jax.vmap(lambda k, p: obj.grad_estimate(k, p, obs), in_axes=(0, None)))
    for name, g in grads(keys, p).items():
        m, se = np.asarray(g.mean(0)), np.asarray(g.std(0)) / math.sqrt(len(keys))
        assert np.all(np.abs(m) <= 4 * se + 1e-6), (name, m, se)
    moved = dict(p, auto_loc=p["auto_loc"] + 0.5)
    g = grads(keys, moved)["auto_loc"]
    z = np.abs(np.asarray(g.mean(0))) / (np.asarray(g.std(0)) / math.sqrt(len(keys)))
    assert np.all(z > 8), z
    # at the exact posterior log p(x, z) - log q(z) = log p(x) for every z
    assert abs(float(obj.estimate(jax.random.key(4), p, obs)) - LOGZ[kind]) < 1e-3


@pytest.mark.parametrize("kind", ["normal", "mvn", "lowrank"])
def test_iwelbo_with_an_autoguide_at_the_exact_posterior_is_log_evidence(kind):
    """Every importance weight equals p(x) when the guide is the posterior: the IWELBO estimate is
    log p(x) to float32 rounding, and its gradient estimate is finite for every parameter."""
    guide, model, obs, p = _exact_params(kind)
    obj = vi.iwelbo(model, guide, 8)
    v, g = obj.value_and_grad_estimate(jax.random.key(0), p, obs)
    assert abs(float(v) - LOGZ[kind]) < 1e-3
    assert set(g) == set(p) and all(bool(jnp.all(jnp.isfinite(x))) for x in g.values())


def test_iwelbo_fit_and_other_objectives_accept_an_autoguide():
    guide = vi.AutoNormal(normal_normal, NN_OBS)
    p = _fit(guide, normal_normal, NN_OBS, 4000, 0.03, objective=vi.iwelbo(normal_normal, guide, 4), final=0.1)
    np.testing.assert_allclose(guide.median(p)["z"], NN_MEAN, atol=0.1)
    p0 = guide.init_params(jax.random.key(0))
    for obj in (vi.rws(normal_normal, guide, 4), vi.vimco(normal_normal, guide, 3)):
        v, g = obj.value_and_grad_estimate(jax.random.key(1), p0, NN_OBS)
        assert np.isfinite(float(v)) and set(g) == set(p0)


# ----------------------------------------------------------------------------- MAP and Laplace
def test_autodelta_is_map_in_constrained_space_and_laplace_in_unconstrained():
    """Gamma-Poisson with posterior Gamma(12, 5): NumPyro's AutoDelta maximizes log p(x, lam) at
    lam itself, the constrained mode (12 - 1) / 5 = 2.2; AutoLaplaceApproximation maximizes the
    density of u = log lam, whose mode is 12 / 5 = 2.4, and its variance in u is 1 / 12 (the
    Hessian of -(12 u - 5 e^u) at the mode). The normal part's mode is its mean 0.8 x."""
    z_mode = np.array([0.5, -1.0]) / (1.0 + SIG**2)
    delta = vi.AutoDelta(gamma_poisson, GP_OBS)
    p = _fit(delta, gamma_poisson, GP_OBS, 3000, 0.05, final=0.01)
    med = delta.median(p)
    assert float(med["lam"]) == pytest.approx((GP_ALPHA - 1) / GP_BETA, rel=2e-3)
    np.testing.assert_allclose(med["z"], z_mode, atol=2e-3)
    lap = vi.AutoLaplaceApproximation(gamma_poisson, GP_OBS)
    p = _fit(lap, gamma_poisson, GP_OBS, 3000, 0.05, final=0.01)
    assert float(lap.median(p)["lam"]) == pytest.approx(GP_ALPHA / GP_BETA, rel=2e-3)
    cov = lap.get_posterior(p).covariance_matrix
    assert float(cov[0, 0]) == pytest.approx(1.0 / GP_ALPHA, rel=5e-3)
    np.testing.assert_allclose(np.diag(cov)[1:], NN_VAR, rtol=5e-3)
    # the point-mass guides: density 1 (AutoDelta) and 1 / |J| (Laplace) at their point
    tr = delta.simulate(jax.random.key(0), p)
    assert float(tr.score) == 0.0
    tr = lap.simulate(jax.random.key(0), p)
    assert float(tr.score) == pytest.approx(-float(p["auto_loc"][0]), abs=1e-5)    # -log|d exp(u)/du|


def test_laplace_covariance_is_the_exact_gaussian_posterior():
    """Linear-Gaussian model: the Hessian of -log p(y, w) is the posterior precision at every point,
    so the Laplace covariance is the exact posterior covariance to float32 rounding, and fitting
    the point mass finds the exact mean."""
    guide = vi.AutoLaplaceApproximation(regression, REG_OBS)
    post = guide.get_posterior({"auto_loc": jnp.asarray(REG_MEAN, jnp.float32)})
    np.testing.assert_allclose(post.covariance_matrix, REG_COV, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(guide.hessian({"auto_loc": jnp.zeros(2)}), _P, rtol=1e-5)
    p = _fit(guide, regression, REG_OBS, 3000, 0.05, final=0.01)
    np.testing.assert_allclose(p["auto_loc"], REG_MEAN, atol=1e-3)
    draws = guide.sample_posterior(jax.random.key(0), p, 4000)["w"]
    assert draws.shape == (4000, 2)
    se = np.sqrt(np.diag(REG_COV) / 4000)
    assert np.all(np.abs(np.asarray(draws.mean(0)) - REG_MEAN) < 4 * se)


@ppl.gen
def _cauchy(params):
    return ppl.cauchy(2.0, 1.0) @ "z"


def test_laplace_reports_a_point_that_is_not_a_mode():
    """-log p of Cauchy(2, 1) is log(1 + (z - 2)^2), whose second derivative 2 (1 - d^2) / (1 + d^2)^2
    is negative at z = 0 (d = -2): not a mode. At z = 2 it is 2, a variance of 1/2."""
    guide = vi.AutoLaplaceApproximation(_cauchy)
    with pytest.raises(ppl.ModelError, match="not positive definite"):
        guide.get_posterior({"auto_loc": jnp.zeros(1)})
    cov = guide.get_posterior({"auto_loc": jnp.full(1, 2.0)}).covariance_matrix
    assert float(cov[0, 0]) == pytest.approx(0.5, rel=1e-5)


# ----------------------------------------------------------------------------- summaries
def test_sample_posterior_shapes_supports_and_keys():
    guide = vi.AutoMultivariateNormal(mixed, MIXED_OBS)
    p = _random_params(guide, jax.random.key(0))
    draws = guide.sample_posterior(jax.random.key(1), p, 5)
    assert {path: draws[path].shape for path, _ in draws.leaves()} == {k: (5,) + v for k, v in MIXED_SHAPES.items()}
    np.testing.assert_allclose(jnp.sum(draws["w"], -1), 1.0, atol=1e-5)
    assert bool(jnp.all(draws["s"] > 0)) and bool(jnp.all((draws["p"] > 0) & (draws["p"] < 1)))
    again = guide.sample_posterior(jax.random.key(1), p, 5)
    assert all(bool(jnp.all(a == b)) for (_, a), (_, b) in zip(draws.leaves(), again.leaves()))
    delta = vi.AutoDelta(mixed, MIXED_OBS)
    pd = delta.init_params(jax.random.key(0))
    d = delta.sample_posterior(jax.random.key(1), pd, 3)
    np.testing.assert_allclose(d["s"], jnp.full(3, delta.median(pd)["s"]))
    with pytest.raises(ppl.ModelError, match="positive int"):
        guide.sample_posterior(jax.random.key(1), p, 0)


def test_sample_posterior_matches_the_guide_moments():
    """The draws follow the guide's distribution: the mean of log s over 4000 draws is within 4
    standard errors of loc."""
    guide = vi.AutoNormal(gamma_poisson, GP_OBS)
    p = {"auto_loc": jnp.array([0.3, 0.1, -0.2]), "auto_scale": jnp.asarray(_softplus_inv([0.4, 0.5, 0.6]),
                                                                             jnp.float32)}
    lam = guide.sample_posterior(jax.random.key(2), p, 4000)["lam"]
    assert abs(float(jnp.log(lam).mean()) - 0.3) < 4 * 0.4 / math.sqrt(4000)


PHI_975 = 1.959963984540054  # the standard normal 0.975 quantile


def test_median_and_quantiles_closed_forms():
    qs = [0.025, 0.5, 0.975]
    zq = np.array([-PHI_975, 0.0, PHI_975])
    # AutoNormal: positive site exp(loc + scale z_q), real sites loc + scale z_q
    guide = vi.AutoNormal(gamma_poisson, GP_OBS)
    p = {"auto_loc": jnp.array([0.3, 0.1, -0.2]), "auto_scale": jnp.asarray(_softplus_inv([0.4, 0.5, 0.6]),
                                                                             jnp.float32)}
    assert float(guide.median(p)["lam"]) == pytest.approx(math.exp(0.3), rel=1e-6)
    q = guide.quantiles(p, qs)
    np.testing.assert_allclose(q["lam"], np.exp(0.3 + 0.4 * zq), rtol=1e-5)
    np.testing.assert_allclose(q["z"], np.array([0.1, -0.2]) + np.outer(zq, [0.5, 0.6]), rtol=1e-5, atol=1e-6)
    # AutoMultivariateNormal: marginal sd = row norms of L
    mvn = vi.AutoMultivariateNormal(regression, REG_OBS)
    raw = jnp.array([[0.2, 0.0], [0.7, -0.1]])
    L = np.array([[np.log1p(np.exp(0.2)), 0.0], [0.7, np.log1p(np.exp(-0.1))]])
    q = mvn.quantiles({"auto_loc": jnp.array([1.0, -1.0]), "auto_scale_tril": raw}, qs)["w"]
    np.testing.assert_allclose(q, np.array([1.0, -1.0]) + np.outer(zq, np.sqrt((L**2).sum(1))), rtol=1e-5)
    # AutoLowRank: marginal sd = sqrt(sum_j W_ij^2 + scale_i^2)
    lr = vi.AutoLowRankMultivariateNormal(regression, REG_OBS, rank=1)
    W, sc = np.array([[0.3], [-0.4]]), np.array([0.5, 0.2])
    q = lr.quantiles({"auto_loc": jnp.zeros(2), "auto_cov_factor": jnp.asarray(W, jnp.float32),
                      "auto_scale": jnp.asarray(_softplus_inv(sc), jnp.float32)}, qs)["w"]
    np.testing.assert_allclose(q, np.outer(zq, np.sqrt(W[:, 0] ** 2 + sc**2)), rtol=1e-5, atol=1e-6)
    # AutoDelta: every quantile is the point
    d = vi.AutoDelta(gamma_poisson, GP_OBS)
    q = d.quantiles({"auto_loc": jnp.array([0.3, 0.1, -0.2])}, qs)
    np.testing.assert_allclose(q["lam"], np.full(3, math.exp(0.3)), rtol=1e-6)


# ----------------------------------------------------------------------------- conventions and errors
def test_model_with_its_own_parameters_and_init_values():
    @ppl.gen
    def model(params):
        z = ppl.normal(params["w"], 1.0) @ "z"
        return ppl.normal(z, 1.0) @ "x"

    guide = vi.AutoNormal(model, {"x": 1.0}, model_params={"w": jnp.array(0.0)})
    params = {**guide.init_params(jax.random.key(0), init_values={"z": 0.25}), "w": jnp.array(0.0)}
    assert float(guide.median(params)["z"]) == pytest.approx(0.25)
    g = vi.elbo(model, guide).grad_estimate(jax.random.key(1), params, ppl.ChoiceMap({"x": 1.0}))
    assert set(g) == {"auto_loc", "auto_scale", "w"} and float(g["w"]) != 0.0
    with pytest.raises(ppl.ModelError, match="model_params"):
        vi.AutoNormal(model, {"x": 1.0})
    with pytest.raises(ppl.ModelError, match="not a latent address"):
        guide.init_params(jax.random.key(0), init_values={"x": 1.0})


def test_unsupported_latent_sites_are_named():
    @ppl.gen
    def discrete(params):
        c = ppl.flip(0.3) @ "coin"
        return ppl.normal(c * 1.0, 1.0) @ "x"

    with pytest.raises(ppl.ModelError, match=r"'coin'.*discrete.*vi\.enum"):
        vi.AutoNormal(discrete, {"x": 0.0})

    @ppl.gen
    def dependent(params):
        s = ppl.gamma(2.0, 1.0) @ "s"
        return ppl.uniform(0.0, s) @ "u"

    with pytest.raises(ppl.ModelError, match=r"'u'.*depends on other random choices"):
        vi.AutoDelta(dependent)

    @ppl.gen
    def branch(params):
        b = ppl.normal(0.0, 1.0) @ "b"
        return ppl.cond(b > 0, ppl.normal, ppl.normal)(0.0, 1.0) @ "br"

    with pytest.raises(ppl.ModelError, match=r"'br'.*ppl\.cond"):
        vi.AutoNormal(branch)

    with pytest.raises(ppl.ModelError, match="no latent sites"):
        vi.AutoNormal(normal_normal, {"z": jnp.zeros(3), "x": X_NN})
    with pytest.raises(ppl.AddressError):
        vi.AutoNormal(normal_normal, {"typo": 1.0})
    with pytest.raises(ppl.ModelError, match="rank"):
        vi.AutoLowRankMultivariateNormal(normal_normal, NN_OBS, rank=0)
    with pytest.raises(ppl.ModelError, match="init_params"):
        vi.AutoNormal(normal_normal, NN_OBS).median(jnp.zeros(3))


def test_support_from_constant_arguments_is_fixed():
    """A support computed from model arguments (not from latent choices) is known at construction."""

    @ppl.gen
    def bounded(params, hi):
        u = ppl.uniform(-1.0, jnp.max(hi)) @ "u"
        return ppl.normal(u, 1.0) @ "x"

    guide = vi.AutoNormal(bounded, {"x": 0.5}, (jnp.array([1.0, 3.0]),))
    q = guide.quantiles({"auto_loc": jnp.array([0.0]), "auto_scale": jnp.array([10.0])}, [0.001, 0.999])["u"]
    assert -1.0 <= float(q[0]) < -0.99 and 2.99 < float(q[1]) <= 3.0
