"""User-defined gradient strategies: a new strategy is one ``vi.Strategy`` subclass (defined here,
in the test file) and needs no edit to ``inference/vi``. Each toy strategy uses one of the three
hooks a strategy has (a differentiable ``site.draw`` replacement, ``site.add_score_term``,
``site.branch`` + ``expand``) and is checked against the exact gradient of a small program:
unbiasedness by a z-test over replicates (fixed seeds), and exactness where the estimator is
exact."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import vi

N = 4000  # independent gradient estimates per z-test
Z = 4.5  # z-score tolerance (fixed seeds: deterministic)


def estimates(obj, params, *args, n=N, seed=0):
    ks = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: obj.grad_estimate(k, params, *args)))(ks)


def assert_unbiased(samples, exact, name=""):
    s = np.asarray(samples, np.float64)
    mean, se = s.mean(), s.std() / np.sqrt(len(s))
    tol = Z * se + 1e-5 * (1 + abs(exact))
    assert abs(mean - exact) <= tol, f"{name}: mean {mean:.5f} exact {exact:.5f} se {se:.5f}"


# ------------------------------------------------------------------ toy strategy 1: inverse CDF
@dataclasses.dataclass(frozen=True, repr=False)
class InverseCDF(vi.Strategy):
    """Reparameterization through the inverse CDF: ``v = F^{-1}(u; theta)``, ``u ~ U(0, 1)``."""

    name = "inverse_cdf"

    def check(self, site):
        if getattr(site.d, "has_enumerate_support", False) or not hasattr(site.d, "icdf"):
            raise vi.EstimatorError(f"inverse_cdf at {site.where}: needs a continuous distribution with icdf")

    def sample(self, site):
        shape = tuple(site.d.batch_shape) + tuple(site.d.event_shape)
        u = jax.random.uniform(site.fold_key(1), shape, minval=1e-7, maxval=1.0 - 1e-7)
        return site.d.icdf(u)


def test_inverse_cdf_strategy_normal_and_exponential_unbiased():
    icdf = InverseCDF()

    @ppl.gen
    def guide(p):
        z = ppl.normal(p["mu"], jnp.exp(p["ls"]), estimator=icdf) @ "z"
        e = ppl.exponential(p["rate"], estimator=icdf) @ "e"
        return z, e

    @vi.expectation
    def f(key, p):
        z, e = guide.simulate(key, p).retval
        return z ** 2 + 3.0 * z + e ** 2

    p = {"mu": jnp.array(0.4), "ls": jnp.array(-0.2), "rate": jnp.array(1.5)}
    g = estimates(f, p)
    sigma, rate = float(np.exp(-0.2)), 1.5
    # E = mu^2 + sigma^2 + 3 mu + 2 / rate^2
    exact = {"mu": 2 * 0.4 + 3.0, "ls": 2 * sigma ** 2, "rate": -4.0 / rate ** 3}
    for k, v in exact.items():
        assert_unbiased(g[k], v, f"inverse_cdf[{k}]")
    # it is used (not silently replaced by reparam): the draw is the inverse CDF of the site's uniform
    @ppl.gen
    def coin(t):
        return ppl.flip(t, estimator=icdf) @ "b"

    with pytest.raises(ppl.ModelError, match="inverse_cdf.*'b'"):
        vi.expectation(lambda k, t: 1.0 * coin.simulate(k, t).retval).grad_estimate(jax.random.key(0), 0.3)


# ------------------------------------------------- toy strategy 2: REINFORCE with a fixed baseline
@dataclasses.dataclass(frozen=True, repr=False)
class FixedBaselineScore(vi.Strategy):
    """Score-function estimator with a constant control variate ``b``."""

    b: float = 0.0
    name = "fixed_baseline_score"

    def sample(self, site):
        v = jax.lax.stop_gradient(site.draw())
        site.add_score_term(v, baseline=self.b)
        return v


def coin_then_normal(strategy):
    @ppl.gen
    def model(t):
        b = ppl.flip(jax.nn.sigmoid(t), estimator=strategy) @ "b"
        return ppl.normal(2.0 * b, 1.0) @ "z"  # reparam (the default)

    return model


def _coin_objective(strategy):
    model = coin_then_normal(strategy)

    @vi.expectation
    def f(key, t):
        k1, k2 = jax.random.split(key)
        z = model.simulate(k1, t).retval
        # copies inside repeat: the score term comes from the returned trace (site_score)
        zs = model.repeat(3).simulate(k2, t).retval
        return (z + 1.0) ** 2 + jnp.sum(zs)

    return f


def _coin_exact(t):
    p = jax.nn.sigmoid(t)
    # E[(z + 1)^2 | b] = (2b + 1)^2 + 1 ; E[z | b] = 2b
    return p * 10.0 + (1 - p) * 2.0 + 3.0 * (2.0 * p)


def test_fixed_baseline_score_strategy_unbiased_top_level_and_nested():
    t = 0.3
    exact = float(jax.grad(_coin_exact)(t))
    g0 = estimates(_coin_objective(FixedBaselineScore(0.0)), jnp.array(t))
    g1 = estimates(_coin_objective(FixedBaselineScore(6.0)), jnp.array(t))
    assert_unbiased(g0, exact, "fixed_baseline b=0")
    assert_unbiased(g1, exact, "fixed_baseline b=6")
    # the baseline reaches the estimator: near E[f] it cuts the variance by a large factor
    assert np.var(np.asarray(g1)) < 0.5 * np.var(np.asarray(g0))
    # the same estimator as the built-in vi.reinforce(baseline=6.0), bit for bit
    g2 = estimates(_coin_objective(vi.reinforce(baseline=6.0)), jnp.array(t))
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))


# --------------------------------------------- toy strategy 3: antithetic pairs via site.branch
@dataclasses.dataclass(frozen=True, repr=False)
class Antithetic(vi.Strategy):
    """Average the rest of the program over the reparameterized draw ``v`` and its reflection
    ``2 loc - v`` (normal sites): ``expand`` replays the program at both values."""

    name = "antithetic"

    def check(self, site):
        if type(site.d).__name__ != "Normal":
            raise vi.EstimatorError(f"antithetic at {site.where}: normal sites only")

    def sample(self, site):
        return site.branch(site.draw())

    def expand(self, site, value, replay):
        return 0.5 * (replay(value) + replay(2.0 * site.d.loc - value))


def test_antithetic_strategy_exact_and_unbiased():
    anti = Antithetic()

    @ppl.gen
    def guide(mu):
        return ppl.normal(mu, 1.0, estimator=anti) @ "z"

    @vi.expectation
    def quad(key, mu):
        z = guide.simulate(key, mu).retval
        return z ** 2 + 3.0 * z  # E = mu^2 + 1 + 3 mu: the antithetic gradient is exact

    g = estimates(quad, jnp.array(0.7), n=64)
    np.testing.assert_allclose(np.asarray(g), 2 * 0.7 + 3.0, rtol=1e-5)

    @ppl.gen
    def both(mu):
        z = ppl.normal(mu, 1.0, estimator=anti) @ "z"
        b = ppl.flip(0.3, estimator=vi.enum) @ "b"  # replays nest: enum inside the antithetic pair
        return jnp.exp(z) * (1.0 + b)

    @vi.expectation
    def expo(key, mu):
        return both.simulate(key, mu).retval  # E = exp(mu + 1/2) * 1.3

    mu = 0.2
    assert_unbiased(estimates(expo, jnp.array(mu)), 1.3 * float(np.exp(mu + 0.5)), "antithetic")
    # inside a combinator the program cannot be replayed: a clear error naming the site
    with pytest.raises(ppl.ModelError, match="antithetic.*'z'.*vi.reinforce"):
        vi.expectation(lambda k, m: jnp.sum(guide.repeat(2).simulate(k, m).retval)).grad_estimate(
            jax.random.key(0), 0.1)


def test_with_estimators_accepts_user_strategy_and_exact_enum_matches():
    """A user strategy works through vi.with_estimators too; enumeration of the other site keeps
    the whole estimator exact here."""

    @ppl.gen
    def guide(t):
        b = ppl.flip(jax.nn.sigmoid(t)) @ "b"
        c = ppl.flip(0.5 + 0.0 * t) @ "c"
        return b + c

    g = vi.with_estimators(guide, {"b": FixedBaselineScore(1.0), "c": vi.enum})

    @vi.expectation
    def f(key, t):
        return 2.0 * g.simulate(key, t).retval

    def exact(t):
        p = jax.nn.sigmoid(t)
        return sum(2.0 * (b + c) * (p if b else 1 - p) * 0.5 for b, c in itertools.product([0, 1], [0, 1]))

    assert_unbiased(estimates(f, jnp.array(-0.4)), float(jax.grad(exact)(-0.4)), "with_estimators")


def test_strategy_contract_errors():
    @dataclasses.dataclass(frozen=True, repr=False)
    class NoExpand(vi.Strategy):
        name = "no_expand"

        def sample(self, site):
            return site.branch(site.draw())

    @dataclasses.dataclass(frozen=True, repr=False)
    class VectorSurrogate(Antithetic):
        def expand(self, site, value, replay):
            return jnp.stack([replay(value), replay(value)])

    def run(strategy):
        @ppl.gen
        def guide(mu):
            return ppl.normal(mu, 1.0, estimator=strategy) @ "z"

        @vi.expectation
        def f(key, mu):
            return guide.simulate(key, mu).retval

        return f.grad_estimate(jax.random.key(0), 0.5)

    with pytest.raises(ppl.ModelError, match="no_expand.*'z'.*expand"):
        run(NoExpand())
    with pytest.raises(ppl.ModelError, match="expand.*shape \\(2,\\).*scalar"):
        run(VectorSurrogate())
    with pytest.raises(ppl.ModelError, match="not a gradient strategy.*vi.Strategy"):
        vi.with_estimators(coin_then_normal(None), {"b": "reinforce"})
    # the public applicability check dispatches to the strategy's own check
    d = ppl.flip.make((0.3,))
    with pytest.raises(ppl.ModelError, match="antithetic at site 'x'"):
        vi.estimators.check_applicable(Antithetic(), ("x",), ppl.flip, d)
