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
import time

import jax

if __name__ == "__main__":  # a worker of test_two_processes_match_one_process: join before any JAX call
    jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[2]}", num_processes=2,
                               process_id=int(sys.argv[1]), initialization_timeout=60)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import ppl  # noqa: E402
from inference import importance, mcmc, smc, vi  # noqa: E402
from inference.sharding import batch_sharding, device_mesh, replicate, shard_batch, to_host  # noqa: E402

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
    seen = []

    @vi.expectation
    def inspected(key, p, xs, ys):
        jax.debug.inspect_array_sharding(xs, callback=seen.append)
        return regression_elbo.fn(key, p, xs, ys)

    @vi.expectation
    def plain(key, p, xs, ys):
        return regression_elbo.fn(key, p, xs, ys)

    def run():
        return vi.fit(jax.random.key(2), inspected, _params(), optax.adam(0.05), 12, vi.minibatch(xs, BATCH),
                      vi.minibatch(ys, BATCH), progress=False)

    ref = run()
    assert seen and all(len(s.device_set) == 1 for s in seen)
    seen.clear()
    mesh = device_mesh()
    with batch_sharding(mesh):  # the mesh is part of the compilation key: this compiles anew
        res = run()
    # the minibatch the objective sees inside the compiled step is split over the 4 devices
    assert seen and all(s.spec[0] == "batch" and len(s.device_set) == 4 for s in seen)
    assert res.params["m"].sharding.is_fully_replicated and len(res.params["m"].sharding.device_set) == 4
    np.testing.assert_allclose(res.losses, ref.losses, rtol=2e-5, atol=1e-5)
    for k in ("m", "s"):
        np.testing.assert_allclose(np.asarray(res.params[k]), np.asarray(ref.params[k]), rtol=2e-5, atol=1e-6)
    # gradients of one step: data sharded over the mesh vs one device
    k = jax.random.key(5)
    g_ref = jax.jit(plain.grad_estimate)(k, _params(), xs, ys)
    g = jax.jit(plain.grad_estimate)(k, _params(), shard_batch(xs, mesh), shard_batch(ys, mesh))
    for name in ("m", "s"):
        np.testing.assert_allclose(np.asarray(g[name]), np.asarray(g_ref[name]), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ multi-process
@ppl.gen
def gaussian3():
    return ppl.normal(jnp.zeros(3), 1.0) @ "x"


@ppl.gen
def regression(xs):
    slope = ppl.normal(0.0, 1.0) @ "slope"
    noise = ppl.gamma(2.0, 2.0) @ "noise"
    return ppl.normal(slope * xs, noise) @ "ys"


@ppl.gen
def ar_step(x, _):
    x = ppl.normal(0.9 * x, 1.0) @ "x"
    ppl.normal(x, 0.5) @ "y"
    return x, None


HMC = mcmc.hmc(ppl.select("x"), step_size=0.3, n_leapfrog=5)
AR = ppl.scan(ar_step, length=8)
AR_OBS = ppl.ChoiceMap({"y": jnp.sin(jnp.arange(8.0))})
RG_ARGS = (jnp.linspace(-1.0, 1.0, 8),)
RG_OBS = ppl.ChoiceMap({"ys": jnp.cos(jnp.linspace(-1.0, 1.0, 8))})


def _runs(xs, ys):
    """Every run compared across processes: ``(mcmc draws, importance, filter, fit, grads)``.

    ``xs``/``ys``: the regression data (global arrays sharded over the mesh in the workers)."""
    out = {}
    res = mcmc.run(jax.random.key(1), HMC, gaussian3.simulate(jax.random.key(0)), 6, n_chains=4)
    out["mcmc_x"] = res.choices["x"]
    imp = importance.sample(jax.random.key(1), regression, RG_ARGS, RG_OBS, n_particles=8)
    out["is_log_weights"], out["is_slope"] = imp.log_weights, imp.choices["slope"]
    out["is_log_z"] = imp.log_marginal_likelihood()
    pf = smc.particle_filter(jax.random.key(0), AR, (0.0, None), AR_OBS, 8)
    out["pf_x"], out["pf_log_weights"], out["pf_log_z"] = pf.choices["x"], pf.log_weights, pf.log_z
    fitted = vi.fit(jax.random.key(3), regression_elbo, _params(), optax.adam(0.05), 2, vi.minibatch(xs, BATCH),
                    vi.minibatch(ys, BATCH), progress=False)
    out["fit_m"], out["fit_s"], out["fit_loss"] = fitted.params["m"], fitted.params["s"], fitted.losses
    g = jax.jit(regression_elbo.grad_estimate)(jax.random.key(5), _params(), xs, ys)
    out["grad_m"], out["grad_s"] = g["m"], g["s"]
    return out


def _worker(pid: int, out_path: str):
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    mesh = device_mesh()  # every process's devices
    xs, ys = _data()
    half = slice(pid * N_DATA // 2, (pid + 1) * N_DATA // 2)  # this process holds only its half of the data
    gxs, gys = shard_batch((np.asarray(xs)[half], np.asarray(ys)[half]), mesh, process_local=True)
    assert not gxs.is_fully_addressable and gxs.shape == (N_DATA,)
    with batch_sharding(mesh):
        out = _runs(gxs, gys)
    # placement helpers on a mesh spanning both processes: each process's slice, the full value, replicas
    out["data_from_halves"], out["data_full"] = gxs, shard_batch(np.asarray(xs), mesh)
    out["replicated"] = replicate(np.asarray(ys), mesh)
    spans = {k: len(v.sharding.device_set) for k, v in out.items() if isinstance(v, jax.Array)}
    out = to_host(out)  # a collective: both processes gather
    if pid == 0:
        np.savez(out_path, **out)
        with open(out_path + ".json", "w") as f:
            json.dump(spans, f)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    out_path = str(tmp_path / "mp.npz")
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(i), str(port), out_path], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        xs, ys = _data()
        ref = to_host(_runs(xs, ys))  # one process, one device (computed while the workers run)
        deadline = time.monotonic() + 240  # generous: CI machines may be loaded
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    got = dict(np.load(out_path))
    with open(out_path + ".json") as f:
        spans = json.load(f)
    # the batch axes really spanned both processes' devices
    for k in ("mcmc_x", "is_log_weights", "pf_x", "data_from_halves", "data_full", "replicated"):
        assert spans[k] == 4, (k, spans)
    np.testing.assert_array_equal(got["data_from_halves"], np.asarray(xs))
    np.testing.assert_array_equal(got["data_full"], np.asarray(xs))
    np.testing.assert_array_equal(got["replicated"], np.asarray(ys))
    for k in ("is_log_weights", "is_slope", "pf_x", "pf_log_weights"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)  # per-particle: bit for bit
    # per chain: the same draws up to float32 rounding (XLA may vectorize a 2-chain shard and the
    # whole batch differently on some CPUs, e.g. with AVX-512: a fused multiply-add's last bit)
    np.testing.assert_allclose(got["mcmc_x"], ref["mcmc_x"], rtol=1e-5, atol=1e-6, err_msg="mcmc_x")
    for k in ("is_log_z", "pf_log_z", "fit_m", "fit_s", "fit_loss", "grad_m", "grad_s"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)  # reductions: rounding


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[3])
