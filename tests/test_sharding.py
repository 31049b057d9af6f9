"""Batch axes sharded across (forced) CPU devices give results identical to one device."""

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from inference.sharding import batch_sharding, constrain_batch, device_mesh, shard_batch


@ppl.gen
def regression(xs):
    slope = ppl.normal(0.0, 1.0) @ "slope"
    noise = ppl.gamma(2.0, 2.0) @ "noise"
    return ppl.normal(slope * xs, noise) @ "ys"


def _particles(key, xs, n):
    keys = constrain_batch(jax.random.split(key, n))
    obs = ppl.ChoiceMap({"ys": jnp.sin(xs)})
    return jax.vmap(lambda k: regression.generate(k, obs, xs))(keys)


def test_forced_devices_available():
    assert len(jax.devices()) == 4


def test_sharded_particles_identical_to_single_device():
    xs = jnp.linspace(-1.0, 1.0, 16)
    key = jax.random.key(3)
    ref_tr, ref_w = jax.jit(_particles, static_argnums=2)(key, xs, 64)
    mesh = device_mesh()
    with batch_sharding(mesh):  # a fresh function: compiled caches are keyed on the function
        tr, w = jax.jit(lambda k, x: _particles(k, x, 64))(key, xs)
    assert len(w.sharding.device_set) == 4
    np.testing.assert_array_equal(np.asarray(w), np.asarray(ref_w))
    np.testing.assert_array_equal(np.asarray(tr.choices["slope"]), np.asarray(ref_tr.choices["slope"]))


def test_shard_batch_places_leading_axis():
    mesh = device_mesh()
    x = shard_batch({"a": jnp.arange(8.0), "b": jnp.ones(())}, mesh)
    assert len(x["a"].sharding.device_set) == 4
    assert float(jnp.sum(x["a"])) == 28.0


def test_mcmc_chains_sharded_identical_to_single_device():
    from inference import mcmc

    @ppl.gen
    def model():
        return ppl.normal(jnp.zeros(3), 1.0) @ "x"

    tr = model.simulate(jax.random.key(0))
    kernel = mcmc.hmc(ppl.select("x"), step_size=0.3, n_leapfrog=5)
    ref = mcmc.run(jax.random.key(1), kernel, tr, 20, n_chains=8)
    with batch_sharding(device_mesh()):
        res = mcmc.run(jax.random.key(1), kernel, tr, 20, n_chains=8)
    assert len(res.choices["x"].sharding.device_set) == 4
    # the same keys and draws per chain (a different draw or accept decision differs by far more);
    # the values agree to float32 rounding
    # (on some CPUs, e.g. with AVX-512, XLA vectorizes a 2-chain shard and the 8-chain batch
    # differently, so a fused multiply-add may round the last bit differently)
    np.testing.assert_allclose(np.asarray(res.choices["x"]), np.asarray(ref.choices["x"]), rtol=1e-5, atol=1e-6)


def test_particle_filter_and_importance_sharded_identical():
    from inference import importance, smc

    @ppl.gen
    def step(x, _):
        x = ppl.normal(0.9 * x, 1.0) @ "x"
        ppl.normal(x, 0.5) @ "y"
        return x, None

    model = ppl.scan(step, length=10)
    obs = ppl.ChoiceMap({"y": jnp.sin(jnp.arange(10.0))})
    ref = smc.particle_filter(jax.random.key(0), model, (0.0, None), obs, 64)
    ref_is = importance.sample(jax.random.key(1), regression, (jnp.linspace(-1, 1, 8),),
                               ppl.ChoiceMap({"ys": jnp.zeros(8)}), n_particles=64)
    with batch_sharding(device_mesh()):
        res = smc.particle_filter(jax.random.key(0), model, (0.0, None), obs, 64)
        res_is = importance.sample(jax.random.key(1), regression, (jnp.linspace(-1, 1, 8),),
                                   ppl.ChoiceMap({"ys": jnp.zeros(8)}), n_particles=64)
    assert len(res_is.log_weights.sharding.device_set) == 4
    # per-particle values are bit-identical; reductions over the sharded particle axis (logsumexp)
    # may differ in the last bits because the summation order differs
    np.testing.assert_allclose(np.asarray(res.log_marginal_likelihood()), np.asarray(ref.log_marginal_likelihood()),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(res_is.log_weights), np.asarray(ref_is.log_weights))
