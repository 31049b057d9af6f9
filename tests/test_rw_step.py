"""mcmc.rw_step / mcmc.rw_proposal: the one random-walk MH step (used by mcmc.rw and smc.tempered)."""

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from inference import mcmc


def _target(k, x):
    # N(1, 2^2) on "a", N(-3, 0.5^2) on "b"; aux: the two parts
    la = jax.scipy.stats.norm.logpdf(x["a"], 1.0, 2.0)
    lb = jax.scipy.stats.norm.logpdf(x["b"], -3.0, 0.5)
    return la + lb, (la, lb)


def test_rw_step_leaves_the_target_invariant():
    # start from exact draws; after 50 steps with per-coordinate scales the draws are still exact
    n = 4000
    k0, k1 = jax.random.split(jax.random.key(0))
    za, zb = jax.random.normal(k0, (2, n))
    x = ppl.ChoiceMap({"a": 1.0 + 2.0 * za, "b": -3.0 + 0.5 * zb})
    scale = ppl.ChoiceMap({"a": jnp.float32(2.0), "b": jnp.float32(0.5)})

    def chain(k, x):
        def body(carry, kk):
            x, ld, aux = carry
            (x, ld, aux), info = mcmc.rw_step(kk, _target, x, 1.5, scale, (ld, aux))
            return (x, ld, aux), info.accepted
        ld, aux = _target(None, x)
        (x, _, aux), acc = jax.lax.scan(body, (x, ld, aux), jax.random.split(k, 50))
        return x, aux, jnp.mean(acc)

    xs, aux, acc = jax.jit(jax.vmap(chain))(jax.random.split(k1, n), x)
    a, b = np.asarray(xs["a"]), np.asarray(xs["b"])
    assert 0.2 < float(acc.mean()) < 0.9
    for v, m, s in ((a, 1.0, 2.0), (b, -3.0, 0.5)):
        assert abs(v.mean() - m) < 4 * s / np.sqrt(n)
        assert abs(v.var() / s**2 - 1) < 4 * np.sqrt(2 / n)
    # the carried aux is the density's parts at the kept state
    np.testing.assert_allclose(aux[0], jax.scipy.stats.norm.logpdf(a, 1.0, 2.0), rtol=1e-5, atol=1e-5)


def test_rw_proposal_scales_and_discrete_leaves():
    x = ppl.ChoiceMap({"a": jnp.zeros(3), "n": jnp.array(4), "b": jnp.ones(2)})
    out = mcmc.rw_proposal(jax.random.key(1), x, 0.5, ppl.ChoiceMap({"a": jnp.array([0.0, 1.0, 0.0]),
                                                                      "n": jnp.array(1), "b": jnp.zeros(2)}))
    assert int(out["n"]) == 4
    assert out["a"][0] == 0.0 and out["a"][2] == 0.0 and out["a"][1] != 0.0
    np.testing.assert_array_equal(out["b"], np.ones(2))
    # a bare array: same key, same bits, scalar step only
    u = jnp.arange(3.0)
    np.testing.assert_array_equal(mcmc.rw_proposal(jax.random.key(2), u, 0.3),
                                  u + 0.3 * jax.random.normal(jax.random.key(2), (3,)))
