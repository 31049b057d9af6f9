"""Kill-and-resume: a run with ``checkpoint_dir`` is killed with SIGKILL at a random moment after
its first checkpoint, resumed in a fresh process, and compared bit for bit with an uninterrupted
run (computed in this process from the same source).

Each run is a small program in a string: it is written to a script for the subprocesses and
``exec``-ed here for the reference, so the three runs execute the same code. (The particle
filter's SIGKILL test is in ``tests/test_smc_online.py``.)
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from inference import checkpoint

_MAIN = textwrap.dedent("""
    if __name__ == "__main__":
        import sys, time
        import ppl.cache
        from inference import checkpoint

        # the killed run and the resumed one share compiled programs through a persistent cache
        ppl.cache.enable_compilation_cache(sys.argv[3])
        save = checkpoint.save

        def slow_save(*a, **kw):  # storage slow enough that the kill lands mid-run (before or in a save)
            time.sleep(0.05)
            return save(*a, **kw)

        checkpoint.save = slow_save
        out = run(sys.argv[1])
        np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in out.items()})
""")


def _steps_in(d) -> list[int]:
    """Every checkpoint step under ``d`` and its subdirectories (mcmc.run writes burn_in/ and draws/)."""
    found = []
    for root, dirs, _ in os.walk(d):
        found += [int(n[5:]) for n in dirs if n.startswith("step_") and "tmp" not in n]
    return found


def kill_and_resume(tmp_path, src: str, seed: int, max_delay: float = 0.3, timeout: float = 120.0, ref=None):
    """Run ``src``'s ``run(checkpoint_dir)`` in a subprocess, SIGKILL it a random time (at most
    ``max_delay`` s) after its first checkpoint appears, resume it in a fresh subprocess and return
    ``(resumed outputs, reference outputs, checkpoint steps found after the kill)``; the reference
    is ``src``'s ``run(None)`` in this process unless given."""
    script = tmp_path / "run.py"
    script.write_text(src + _MAIN)
    d, out, cache = tmp_path / "ck", tmp_path / "out.npz", tmp_path / "jax_cache"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + sys.path))
    p = subprocess.Popen([sys.executable, str(script), str(d), str(out), str(cache)], env=env)
    if ref is None:
        ns = {"__name__": "reference"}
        exec(compile(src, "<reference>", "exec"), ns)  # noqa: S102 - the test's own source
        ref = {k: np.asarray(v) for k, v in ns["run"](None).items()}  # computed while the subprocess starts
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and not _steps_in(d):
        time.sleep(0.02)
    time.sleep(np.random.default_rng(seed).uniform(0.0, max_delay))
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.wait()
    assert killed, "the run finished before it could be killed; make it longer"
    assert p.returncode == -signal.SIGKILL and not out.exists()
    found = _steps_in(d)
    assert found, "no checkpoint was written before the kill"
    subprocess.run([sys.executable, str(script), str(d), str(out), str(cache)], env=env, check=True, timeout=timeout)
    with np.load(out) as z:
        got = dict(z)
    return got, ref, found


def assert_same_bits(got: dict, ref: dict):
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k


# ------------------------------------------------------------------------------ mcmc.run
MCMC_SRC = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp, ppl
    from inference import mcmc

    @ppl.gen
    def model(ys):
        mu = ppl.normal(jnp.zeros(2), 3.0) @ "mu"
        return ppl.normal(jnp.broadcast_to(mu, ys.shape), 1.0) @ "ys"

    def run(checkpoint_dir):
        ys = jnp.stack([jnp.linspace(-1.0, 2.0, 6), jnp.linspace(0.5, 1.5, 6)], axis=1)
        tr = model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys}), ys)[0]
        # dual-averaging step-size adaptation during burn-in: its state crosses the checkpoints
        kernel = mcmc.hmc(ppl.select("mu"), step_size=0.5, n_leapfrog=4, adapt_step_size=True)
        res = mcmc.run(jax.random.key(3), kernel, tr, 60, n_chains=3, burn_in=60, chunk_size=10,
                       checkpoint_dir=checkpoint_dir, progress=False)
        return {"mu": res.choices["mu"], "step_size": res.info.step_size, "accepted": res.info.accepted,
                "final": res.final_trace.choices["mu"], "score": res.final_trace.get_score()}
""")


def test_mcmc_run_sigkill_and_resume(tmp_path):
    got, ref, found = kill_and_resume(tmp_path, MCMC_SRC, seed=1)
    assert got["mu"].shape == (3, 60, 2)
    assert len(np.unique(got["step_size"][:, -1])) == 3  # each chain adapted its own step size
    assert_same_bits(got, ref)


# ------------------------------------------------------------------------------ vi.fit
VI_SRC = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp, optax, ppl
    from inference import vi

    @vi.expectation
    def objective(key, p):
        z = p["m"] + jnp.exp(p["s"]) * jax.random.normal(key, p["m"].shape)
        return -jnp.sum((z - jnp.array([3.0, -1.0])) ** 2) + jnp.sum(p["s"])

    def run(checkpoint_dir):
        params = {"m": jnp.zeros(2), "s": jnp.zeros(2)}
        opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(optax.exponential_decay(0.05, 100, 0.5)))
        res = vi.fit(jax.random.key(2), objective, params, opt, 120, chunk_size=10, checkpoint_dir=checkpoint_dir,
                     progress=False)
        return {"m": res.params["m"], "s": res.params["s"], "losses": res.losses,
                "count": jax.tree_util.tree_leaves(res.opt_state)[0]}
""")


def test_vi_fit_sigkill_and_resume(tmp_path):
    got, ref, found = kill_and_resume(tmp_path, VI_SRC, seed=2)
    assert max(found) < 120
    assert got["losses"].shape == (120,)
    assert_same_bits(got, ref)


# ------------------------------------------------------------------------------ smc.tempered
TEMPERED_SRC = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp, ppl
    from inference import smc

    @ppl.gen
    def model(xs):
        w = ppl.normal(jnp.zeros(2), 2.0) @ "w"
        return ppl.normal(w[0] + w[1] * xs, 0.5) @ "ys"

    XS = jnp.linspace(-1.0, 1.0, 8)
    OBS = ppl.ChoiceMap({"ys": 0.3 + 1.2 * XS})

    def run(checkpoint_dir, obs=OBS, betas=None, adapt="pilot", **kw):
        res = smc.tempered(jax.random.key(5), model, (XS,), obs, 32, betas=betas, n_temps=8, n_mcmc=1,
                           adapt=adapt, checkpoint_dir=checkpoint_dir, **kw)
        ps = res.particles
        return {"w": ps.traces.choices["w"], "score": ps.traces.get_score(), "lw": ps.log_weights,
                "log_z": res.log_marginal_likelihood(), "ess": res.ess, "acc": res.acceptance, "betas": res.betas}
""")


def _arrays(out):
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def tempered_ns():
    """TEMPERED_SRC's names, and ``ref``: its uninterrupted run (shared by the tests: one compilation)."""
    ns = {"__name__": "tempered_src"}
    exec(compile(TEMPERED_SRC, "<tempered>", "exec"), ns)  # noqa: S102 - the test's own source
    ns["ref"] = _arrays(ns["run"](None))
    return ns


def test_tempered_resume_between_temperatures_is_bit_identical(tmp_path, tempered_ns):
    """The pilot population (adapt="pilot": adapted proposal scales) is part of the saved state."""
    import shutil

    import jax.numpy as jnp

    import ppl

    ns, adapt = tempered_ns, "pilot"
    ref = ns["ref"]
    d = str(tmp_path / "ck")
    whole = _arrays(ns["run"](d, adapt=adapt, block_size=3, keep_checkpoints=4))  # steps 3, 6, 8
    assert_same_bits(whole, ref)
    assert checkpoint.latest_step(d) == 8
    # "interrupted" after 6 temperatures: drop the later checkpoints, the rerun resumes from step 6
    for s in checkpoint._steps(d):
        if s > 6:
            shutil.rmtree(os.path.join(d, f"step_{s:010d}"))
    assert checkpoint.latest_step(d) == 6
    assert_same_bits(_arrays(ns["run"](d, adapt=adapt, block_size=3)), ref)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="betas"):
        ns["run"](d, adapt=adapt, betas=jnp.linspace(0.1, 1.0, 8))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="data_sha256"):
        ns["run"](d, adapt=adapt, obs=ppl.ChoiceMap({"ys": 0.5 + ns["XS"]}))
    with pytest.raises(ppl.ModelError, match="block_size"):
        ns["run"](d, adapt=adapt, block_size=0)


def test_tempered_sigkill_and_resume(tmp_path, tempered_ns):
    got, ref, _ = kill_and_resume(tmp_path, TEMPERED_SRC, seed=3, ref=tempered_ns["ref"])  # saves every temperature
    assert got["w"].shape == (32, 2)
    assert_same_bits(got, ref)


# ------------------------------------------------------------------------------ several processes
DIST_SRC = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp, ppl
    from inference import mcmc

    @ppl.gen
    def model(ys):
        mu = ppl.normal(jnp.zeros(2), 3.0) @ "mu"
        return ppl.normal(jnp.broadcast_to(mu, ys.shape), 1.0) @ "ys"

    def run(checkpoint_dir, n_samples):
        ys = jnp.stack([jnp.linspace(-1.0, 2.0, 6), jnp.linspace(0.5, 1.5, 6)], axis=1)
        tr = model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys}), ys)[0]
        kernel = mcmc.rw("mu", 2.0)  # adapts its step size during burn-in (state crosses the checkpoints)
        return mcmc.run(jax.random.key(3), kernel, tr, n_samples, n_chains=4, burn_in=20, chunk_size=10,
                        checkpoint_dir=checkpoint_dir, progress=False)

    def outputs(res):
        return {"mu": res.choices["mu"], "step_size": res.info.step_size, "final": res.final_trace.choices["mu"]}
""")

DIST_WORKER = textwrap.dedent("""
    import json, sys, jax
    jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[2]}", num_processes=2,
                               process_id=int(sys.argv[1]), initialization_timeout=60)
""") + DIST_SRC + textwrap.dedent("""
    from inference.sharding import batch_sharding, device_mesh, to_host

    pid, d, out_path = int(sys.argv[1]), sys.argv[3], sys.argv[4]
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    with batch_sharding(device_mesh()):
        first = run(d, 20)  # stops after 20 draws: the checkpoints of burn-in and draws are on disk
        spans = len(first.final_trace.choices["mu"].sharding.device_set)
        res = run(d, 40)    # continues from the checkpoint at draw 20
        out = to_host(outputs(res))  # a collective: both processes gather
    if pid == 0:
        np.savez(out_path, **out)
        with open(out_path + ".json", "w") as f:
            json.dump({"spans": spans}, f)
    jax.distributed.shutdown()
""")


def test_mcmc_checkpoint_across_two_processes(tmp_path):
    """mcmc.run(checkpoint_dir=) with 4 chains over two jax.distributed processes (two CPU devices
    each): the chains' state is gathered, written once (process 0) and restored by each process
    into its own shards; a run continued from the checkpoint equals one uninterrupted
    single-process run bit for bit."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script, d, out = tmp_path / "worker.py", tmp_path / "ck", tmp_path / "mp.npz"
    script.write_text(DIST_WORKER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([root] + sys.path))
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(d), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        ns = {"__name__": "dist_src"}
        exec(compile(DIST_SRC, "<dist>", "exec"), ns)  # noqa: S102 - the test's own source
        ref = {k: np.asarray(v) for k, v in ns["outputs"](ns["run"](None, 40)).items()}
        deadline = time.monotonic() + 240
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    import json

    with open(str(out) + ".json") as f:
        assert json.load(f)["spans"] == 4  # the chains really were spread over both processes
    assert checkpoint.latest_step(str(d / "draws")) == 40 and checkpoint.latest_step(str(d / "burn_in")) == 20
    with np.load(out) as z:
        got = dict(z)
    assert got["mu"].shape == (4, 40, 2)
    assert_same_bits(got, ref)
