"""Streaming particle filter: blocks == one run bit for bit, memory independent of T, checkpointed
runs (save/restore of the online state, particle_filter(checkpoint_dir=), SIGKILL and resume)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import checkpoint, smc
from inference.smc.filters import run_filter


@ppl.gen
def step(x, _):
    x = ppl.normal(0.9 * x, 1.0) @ "x"
    ppl.normal(x, 0.5) @ "y"
    return x, None


T = 50
YS = jnp.sin(jnp.arange(T) / 3.0) * 2.0
MODEL = ppl.scan(step, length=T)
OBS = ppl.ChoiceMap({"y": YS})


def _eq(a, b):
    return all(bool(np.array_equal(np.asarray(x), np.asarray(y)))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_blocks_equal_one_run_bit_for_bit():
    key, ess_threshold = jax.random.key(3), 0.5
    full = smc.particle_filter(key, MODEL, (0.0, None), OBS, 32, ess_threshold=ess_threshold)
    last = smc.particle_filter(key, MODEL, (0.0, None), OBS, 32, ess_threshold=ess_threshold, history=False)
    st = smc.filter_init(key, MODEL, 0.0, 32, ess_threshold=ess_threshold)
    for lo, hi in [(0, 25), (25, T)]:
        st = smc.filter_step_block(st, ppl.ChoiceMap({"y": YS[lo:hi]}))
    assert int(st.t) == T
    for res in (full, last):
        assert _eq(st.log_z, res.log_z)
        assert _eq(st.carries, jax.tree_util.tree_map(lambda c: c[-1], res.carries))
        assert _eq(st.log_weights, res.log_weights[-1])
    assert _eq(full.log_z_steps, last.log_z_steps)


def test_block_needs_a_time_axis():
    st = smc.filter_init(jax.random.key(0), MODEL, 0.0, 8)
    with pytest.raises(ppl.ModelError, match="leading time"):
        smc.filter_step_block(st, ppl.ChoiceMap({"y": jnp.float32(1.0)}))


def _sizes(T_):
    obs = ppl.ChoiceMap({"y": jnp.zeros(T_)})
    model = ppl.scan(step, length=T_)
    f = jax.jit(lambda k, o: run_filter(k, model, (0.0, None), o, 32, history=False).log_z)
    m = f.lower(jax.random.key(0), obs).compile().memory_analysis()
    return m.temp_size_in_bytes, m.output_size_in_bytes, m.argument_size_in_bytes


def test_history_false_memory_independent_of_T():
    t1, o1, a1 = _sizes(1_000)
    t2, o2, a2 = _sizes(10_000)
    assert a2 - a1 == 4 * 9_000  # only the observations grow with T
    # the compiled filter's working memory grows only by the three (T,) per-step arrays
    # (ess f32, resampled bool, log_z_steps f32: 9 bytes a step), not with the particles
    assert (t2 + o2) - (t1 + o1) <= 9 * 9_000 + 4096, (t1, o1, t2, o2)


def test_online_T_10000_runs_in_blocks_with_constant_state():
    st = smc.filter_init(jax.random.key(1), ppl.scan(step, length=1), 0.0, 16)
    ys = jnp.sin(jnp.arange(10_000) / 50.0)
    sizes = {jax.tree_util.tree_structure(st)}
    for b in range(10):
        st = smc.filter_step_block(st, ppl.ChoiceMap({"y": ys[b * 1000:(b + 1) * 1000]}))
        sizes.add(jax.tree_util.tree_structure(st))
        assert st.carries.shape == (16,)
    assert int(st.t) == 10_000 and len(sizes) == 1 and bool(jnp.isfinite(st.log_z))


def test_state_checkpoint_save_restore(tmp_path):
    key = jax.random.key(5)
    st = smc.filter_init(key, MODEL, 0.0, 32, ess_threshold=0.5)
    st = smc.filter_step_block(st, ppl.ChoiceMap({"y": YS[:25]}))
    checkpoint.save(str(tmp_path), 25, st)
    back = checkpoint.restore(str(tmp_path), like=smc.filter_init(jax.random.key(0), MODEL, 0.0, 32,
                                                                   ess_threshold=0.5))
    assert back.config == st.config and int(back.t) == 25
    done = smc.filter_step_block(back, ppl.ChoiceMap({"y": YS[25:]}))
    ref = smc.particle_filter(key, MODEL, (0.0, None), OBS, 32, ess_threshold=0.5)
    assert _eq(done.log_z, ref.log_z) and _eq(done.carries, ref.carries[-1])


@pytest.mark.parametrize("history", [True, False])
def test_checkpointed_filter_equals_uninterrupted(tmp_path, history):
    """Also the ISSUE-14 resume check in-process (the subprocess SIGKILL test is below)."""
    key = jax.random.key(7)
    ref = smc.particle_filter(key, MODEL, (0.0, None), OBS, 32, ess_threshold=0.5, history=history)
    d = str(tmp_path / "ck")
    a = smc.particle_filter(key, MODEL, (0.0, None), OBS, 32, ess_threshold=0.5, history=history,
                            checkpoint_dir=d, block_size=10, keep_checkpoints=5)
    assert _eq(a, ref)
    steps = sorted(os.listdir(d))
    assert "step_0000000050" in steps
    # drop the newest checkpoints: the rerun resumes from step 30 and still gives the same bits
    for s in steps:
        if s.startswith("step_") and int(s[5:]) > 30:
            import shutil
            shutil.rmtree(os.path.join(d, s))
    assert checkpoint.latest_step(d) == 30
    b = smc.particle_filter(key, MODEL, (0.0, None), OBS, 32, ess_threshold=0.5, history=history,
                            checkpoint_dir=d, block_size=10)
    assert _eq(b, ref)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="n_particles"):
        smc.particle_filter(key, MODEL, (0.0, None), OBS, 16, ess_threshold=0.5, history=history,
                            checkpoint_dir=d, block_size=10)


_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax, jax.numpy as jnp, ppl
    from inference import smc

    @ppl.gen
    def step(x, _):
        x = ppl.normal(0.9 * x, 1.0) @ "x"
        ppl.normal(x, 0.5) @ "y"
        return x, None

    T = 2000
    ys = jnp.sin(jnp.arange(T) / 30.0)
    res = smc.particle_filter(jax.random.key(11), ppl.scan(step, length=T), (0.0, None), ppl.ChoiceMap({"y": ys}),
                              64, ess_threshold=0.5, history=False, checkpoint_dir=sys.argv[1], block_size=40)
    np.savez(sys.argv[2], log_z=np.asarray(res.log_z), steps=np.asarray(res.log_z_steps),
             carries=np.asarray(res.carries), lw=np.asarray(res.log_weights))
""")


def test_sigkill_and_resume(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    d, out = tmp_path / "ck", tmp_path / "out.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    p = subprocess.Popen([sys.executable, str(script), str(d), str(out)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        if d.is_dir() and any(n.startswith("step_") for n in os.listdir(d)):
            break
        time.sleep(0.05)
    time.sleep(np.random.default_rng(0).uniform(0.0, 0.5))
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.wait()
    assert killed, "the run finished before it could be killed; make it longer"
    assert not out.exists()
    stopped_at = checkpoint.latest_step(str(d))
    assert stopped_at is not None and stopped_at < 2000
    subprocess.run([sys.executable, str(script), str(d), str(out)], env=env, check=True, timeout=120)
    got = np.load(out)

    ys = jnp.sin(jnp.arange(2000) / 30.0)
    ref = smc.particle_filter(jax.random.key(11), ppl.scan(step, length=2000), (0.0, None),
                              ppl.ChoiceMap({"y": ys}), 64, ess_threshold=0.5, history=False)
    assert np.array_equal(got["log_z"], np.asarray(ref.log_z))
    assert np.array_equal(got["steps"], np.asarray(ref.log_z_steps))
    assert np.array_equal(got["carries"], np.asarray(ref.carries))
    assert np.array_equal(got["lw"], np.asarray(ref.log_weights))


@ppl.gen
def drift_step(x, u):
    x = ppl.normal(x + u, 1.0) @ "x"
    ppl.normal(x, 0.5) @ "y"
    return x, None


def test_blocks_with_per_step_inputs_equal_one_run():
    us, ys = jnp.linspace(-1.0, 1.0, 12), jnp.cos(jnp.arange(12.0))
    model, key = ppl.scan(drift_step, length=12), jax.random.key(9)
    ref = smc.particle_filter(key, model, (0.0, us), ppl.ChoiceMap({"y": ys}), 16, history=False)
    st = smc.filter_init(key, model, 0.0, 16)
    for lo in (0, 6):
        st = smc.filter_step_block(st, ppl.ChoiceMap({"y": ys[lo:lo + 6]}), us[lo:lo + 6])
    assert _eq((st.log_z, st.carries, st.log_weights), (ref.log_z, ref.carries[-1], ref.log_weights[-1]))
    with pytest.raises(ppl.ModelError, match="leading time"):
        smc.filter_step_block(st, ppl.ChoiceMap({"y": ys[:6]}), us[:5])
