"""Data-parallel VI on (forced) host devices, and multi-process runs on ``jax.distributed``.

The multi-process test starts two local CPU processes (this file run as a script, two CPU devices
each) joined by ``jax.distributed.initialize`` (gloo collectives) and compares their results,
gathered with ``inference.sharding.to_host``, with a single-process run in this process.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ppl
from inference import importance, mcmc, smc, vi
from inference.sharding import batch_sharding, device_mesh, shard_batch, to_host

N_DATA, BATCH = 64, 16


@vi.expectation
def regression_elbo(key, p, xs, ys):
    """ELBO of y ~ N(w x, 1), w ~ N(0, 1) with q(w) = N(m, exp(s)), the likelihood scaled up from the batch."""
    w = ppl.normal.simulate(key, p["m"], jnp.exp(p["s"])).retval
    loglik = jnp.sum(-0.5 * (ys - w * xs) ** 2) * (N_DATA / xs.shape[0])
    return loglik - 0.5 * w**2 + p["s"]  # + the entropy of q up to a constant


def _data():
    xs = jnp.linspace(-1.0, 1.0, N_DATA)
    ys = 0.7 * xs + 0.3 * jnp.sin(7.0 * xs)
    return xs, ys


def _params():
    return {"m": jnp.array(0.0), "s": jnp.array(-1.0)}


# ------------------------------------------------------------------------------ data-parallel VI
def test_vi_fit_data_parallel_matches_one_device():
    xs, ys = _data()
    ref = vi.fit(jax.random.key(2), regression_elbo, _params(), optax.adam(0.05), 30, vi.minibatch(xs, BATCH),
                 vi.minibatch(ys, BATCH), progress=False)
    seen = []

    @vi.expectation
    def inspected(key, p, xs, ys):
        jax.debug.inspect_array_sharding(xs, callback=seen.append)
        return regression_elbo.fn(key, p, xs, ys)

    @vi.expectation
    def plain(key, p, xs, ys):
        return regression_elbo.fn(key, p, xs, ys)

    mesh = device_mesh()
    with batch_sharding(mesh):
        res = vi.fit(jax.random.key(2), inspected, _params(), optax.adam(0.05), 30, vi.minibatch(xs, BATCH),
                     vi.minibatch(ys, BATCH), progress=False)
    # the minibatch the objective sees inside the compiled step is split over the 4 devices
    assert seen and all(s.spec[0] == "batch" and len(s.device_set) == 4 for s in seen)
    assert res.params["m"].sharding.is_fully_replicated and len(res.params["m"].sharding.device_set) == 4
    np.testing.assert_allclose(res.losses, ref.losses, rtol=2e-5, atol=1e-5)
    for k in ("m", "s"):
        np.testing.assert_allclose(np.asarray(res.params[k]), np.asarray(ref.params[k]), rtol=2e-5, atol=1e-6)
    # the mesh is part of the compilation key: the same objective without the mesh is not sharded
    seen.clear()
    vi.fit(jax.random.key(2), inspected, _params(), optax.adam(0.05), 3, vi.minibatch(xs, BATCH),
           vi.minibatch(ys, BATCH), progress=False)
    assert seen and all(len(s.device_set) == 1 for s in seen)
    # gradients of one step: data sharded over the mesh vs one device
    k = jax.random.key(5)
    g_ref = jax.jit(plain.grad_estimate)(k, _params(), xs, ys)
    g = jax.jit(plain.grad_estimate)(k, _params(), shard_batch(xs, mesh), shard_batch(ys, mesh))
    for name in ("m", "s"):
        np.testing.assert_allclose(np.asarray(g[name]), np.asarray(g_ref[name]), rtol=1e-5, atol=1e-5)
