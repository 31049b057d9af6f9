"""Checkpoints: metadata checks on resume, fallback past damaged checkpoints, pruning and incremental
history, and vi.fit's compiled step keyed on an optimizer fingerprint (no recompilation, no leak)."""

import gc
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ppl
from inference import checkpoint as ckpt
from inference import vi

fit_mod = sys.modules["inference.vi.fit"]


@vi.expectation
def quad(key, p):
    z = p["m"] + 0.3 * jax.random.normal(key, p["m"].shape)
    return -jnp.sum((z - jnp.array([3.0, -1.0])) ** 2)


P0 = {"m": jnp.zeros(2)}


def run(d=None, n=20, key=0, params=P0, opt=None, obj=quad, **kw):
    return vi.fit(jax.random.key(key), obj, params, opt if opt is not None else optax.adam(0.05), n, chunk_size=5,
                  progress=False, checkpoint_dir=None if d is None else str(d), **kw)


def same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def reference_fit(objective, params, optimizer, n, key):
    """vi.fit's update rule written out with optax, one jitted step at a time."""
    state = optimizer.init(params)

    @jax.jit
    def step(k, p, s):
        k_obj, _ = jax.random.split(k)
        value, grads = objective.value_and_grad_estimate(k_obj, p)
        updates, s = optimizer.update(jax.tree_util.tree_map(jnp.negative, grads), s, p)
        return optax.apply_updates(p, updates), s, -value

    losses = []
    for i in range(n):
        params, state, loss = step(jax.random.fold_in(key, i), params, state)
        losses.append(loss)
    return params, np.asarray(losses)


@pytest.fixture(scope="module")
def full30():
    return run(n=30)


# ------------------------------------------------------------------------ resume checks
@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "ck"
    run(d, n=20)
    return d


@vi.expectation
def other_objective(key, p):
    return -jnp.sum(p["m"] ** 2)


@pytest.mark.parametrize("change, match", [
    (dict(key=1), r"key: saved 'threefry2x32 key \[0, 0\]' vs given 'threefry2x32 key \[0, 1\]'"),
    (dict(params={"m": jnp.zeros(3)}), r"shape of state\['params'\]\['m'\]: saved \(2,\) vs given \(3,\)"),
    (dict(params={"m": jnp.zeros(2, jnp.bfloat16)}),
     r"dtype of state\['params'\]\['m'\]: saved 'float32' vs given 'bfloat16'"),
    (dict(params={"w": jnp.zeros(2)}), r"state tree structure: saved .*\['params'\]\['m'\].* vs given .*'w'"),
    (dict(opt=optax.adam(0.1)), r"optimizer update\..*step_size: saved -0\.05 vs given -0\.1"),
    (dict(opt=optax.sgd(0.05)), r"optimizer update\..*: saved '.*scale_by_adam.*' vs given"),
    (dict(obj=other_objective), r"objective: saved 'quad .*' vs given 'other_objective"),
    (dict(n=10), r"n_steps: saved run reached step 20 .* vs given n_steps=10"),
])
def test_resume_refuses_incompatible_settings(saved_dir, change, match):
    kw = {"n": 30, **change}
    with pytest.raises(ckpt.CheckpointMismatchError, match=match) as info:
        run(saved_dir, **kw)
    assert isinstance(info.value, ppl.ModelError)
    assert "step 20" in str(info.value)


def test_resume_is_bit_identical_and_n_steps_may_grow(tmp_path, full30):
    run(tmp_path / "ck", n=20)
    resumed = run(tmp_path / "ck", n=30)
    assert same(resumed.params, full30.params) and same(resumed.opt_state, full30.opt_state)
    assert np.array_equal(resumed.losses, full30.losses)
    again = run(tmp_path / "ck", n=30)  # a finished run restores without running anything
    assert np.array_equal(again.losses, full30.losses) and same(again.params, full30.params)


def test_inject_hyperparams_resume_and_mismatch(tmp_path):
    def opt(lr):
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr)

    full = run(n=15, opt=opt(0.05))
    run(tmp_path / "ck", n=10, opt=opt(0.05))
    resumed = run(tmp_path / "ck", n=15, opt=opt(0.05))
    assert np.array_equal(resumed.losses, full.losses) and same(resumed.params, full.params)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"learning_rate'\]: saved 0\.05 vs given 0\.1"):
        run(tmp_path / "ck", n=15, opt=opt(0.1))


def test_chunked_loop_resume_with_key_state_and_other_chunk_size(tmp_path):
    def step(key, state):
        k, x = state
        k, sub = jax.random.split(k)
        x = x + jax.random.normal(sub) + jax.random.uniform(key)
        return (k, x), {"x": x, "twice": jnp.stack([x, 2 * x])}

    s0 = (jax.random.key(7), jnp.zeros(()))
    full, outs = ckpt.chunked_loop(jax.random.key(1), step, s0, 12, chunk_size=4, progress=False)
    d = str(tmp_path / "ck")
    ckpt.chunked_loop(jax.random.key(1), step, s0, 8, chunk_size=4, directory=d, progress=False)
    resumed, outs2 = ckpt.chunked_loop(jax.random.key(1), step, s0, 12, chunk_size=2, directory=d, progress=False)
    assert same(jax.random.key_data(resumed[0]), jax.random.key_data(full[0])) and same(resumed[1], full[1])
    assert outs2["twice"].shape == (12, 2) and same(outs2, outs)
    with pytest.raises(ckpt.CheckpointMismatchError, match="key: saved"):
        ckpt.chunked_loop(jax.random.key(2), step, s0, 12, chunk_size=4, directory=d, progress=False)


def test_restore_checks_structure():
    import tempfile

    d = tempfile.mkdtemp()
    ckpt.save(d, 2, {"x": jnp.arange(3.0)})
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"shape of state\['x'\]: saved \(3,\) vs given \(4,\)"):
        ckpt.restore(d, {"x": jnp.zeros(4)})
    assert np.array_equal(ckpt.restore(d, {"x": jnp.zeros(3)})["x"], np.arange(3.0))


# ------------------------------------------------------------------------ damage, pruning, history
def _truncate_state(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "r+b") as fh:
                fh.truncate(os.path.getsize(p) // 2)


def _scramble_state_data(step_dir):
    data_dir = os.path.join(step_dir, "state", "d")  # orbax's data files (small arrays sit inline in the tree)
    p = max((os.path.join(data_dir, f) for f in os.listdir(data_dir)), key=os.path.getsize)
    data = bytearray(open(p, "rb").read())
    for i in range(len(data) // 2, len(data)):
        data[i] ^= 0x5A
    open(p, "wb").write(bytes(data))


def _truncate_meta(step_dir):
    p = os.path.join(step_dir, "meta.json")
    text = open(p).read()
    open(p, "w").write(text[: len(text) // 2])


def _wrong_checksum(step_dir):
    p = os.path.join(step_dir, "meta.json")
    meta = json.load(open(p))
    meta["checksums"][-1] = "0" * 64
    json.dump(meta, open(p, "w"))


def _damage_history(step_dir):
    meta = json.load(open(os.path.join(step_dir, "meta.json")))
    p = os.path.join(os.path.dirname(step_dir), "history", meta["history"][-1][2])
    open(p, "wb").write(open(p, "rb").read()[:-7])


@pytest.mark.parametrize("damage", [_truncate_state, _scramble_state_data, _truncate_meta, _wrong_checksum,
                                    _damage_history])
def test_falls_back_past_damaged_latest_checkpoint(tmp_path, full30, damage):
    d = tmp_path / "ck"
    run(d, n=20)
    damage(str(d / "step_0000000020"))
    if damage is not _damage_history:  # restore() reads the state only
        like = {"opt_state": optax.adam(0.05).init(P0), "params": P0}
        with pytest.warns(ckpt.CheckpointWarning, match="damaged checkpoint at step 20"):
            state = ckpt.restore(str(d), like)
        assert same(state, ckpt.restore(str(d), like, step=15))
    with pytest.warns(ckpt.CheckpointWarning, match="damaged checkpoint at step 20"):
        resumed = run(d, n=30)
    assert np.array_equal(resumed.losses, full30.losses) and same(resumed.params, full30.params)


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    d = tmp_path / "ck"
    run(d, n=15)
    for s in (5, 10, 15):
        if (d / f"step_{s:010d}").exists():
            _truncate_meta(str(d / f"step_{s:010d}"))
    with pytest.warns(ckpt.CheckpointWarning):
        with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint under .*step 15 .*step 10 .*step 5"):
            run(d, n=20)


def test_keeps_last_checkpoints_and_stores_history_once(tmp_path, full30):
    d = tmp_path / "ck"
    run(d, n=30, keep_checkpoints=2)
    assert sorted(n for n in os.listdir(d) if n.startswith("step_")) == ["step_0000000025", "step_0000000030"]
    hist = sorted(os.listdir(d / "history"))
    assert hist == [f"outs_{s:010d}_{s + 5:010d}.npz" for s in range(0, 30, 5)]
    for name in hist:  # every chunk file holds exactly its own 5 losses
        with np.load(d / "history" / name) as z:
            assert z["leaf_000000"].shape == (5,)
    meta = json.load(open(d / "step_0000000030" / "meta.json"))
    assert len(meta["checksums"]) == len(jax.tree_util.tree_leaves((full30.params, full30.opt_state)))
    assert [e[:2] for e in meta["history"]] == [[s, s + 5] for s in range(0, 30, 5)]
    resumed = run(d, n=30, keep_checkpoints=2)
    assert np.array_equal(resumed.losses, full30.losses)


# ------------------------------------------------------------------------ compilation and memory
def test_fresh_optimizers_compile_once_and_do_not_leak():
    import psutil

    run(n=20, opt=optax.adam(1e-2))  # warm: compiles the chunk program once
    n0 = fit_mod._chunk._cache_size()
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    results = [run(n=20, opt=optax.adam(1e-2)) for _ in range(20)]
    gc.collect()
    growth = (proc.memory_info().rss - rss0) / 20 / 2**20
    assert fit_mod._chunk._cache_size() == n0, "a fresh optimizer object recompiled the step"
    assert growth < 1.0, f"RSS grew by {growth:.2f} MiB per vi.fit call"
    assert all(np.array_equal(r.losses, results[0].losses) for r in results)


def test_different_hyperparameters_share_a_program_but_not_constants():
    key = jax.random.key(3)
    slow, fast = run(n=20, key=3, opt=optax.adam(1e-2)), run(n=20, key=3, opt=optax.adam(1e-1))
    n0 = fit_mod._chunk._cache_size()
    run(n=20, key=3, opt=optax.adam(0.3))
    assert fit_mod._chunk._cache_size() == n0  # the learning rate is data: no new program
    assert not np.allclose(np.asarray(slow.params["m"]), np.asarray(fast.params["m"]), atol=1e-2)
    for res, lr in ((slow, 1e-2), (fast, 1e-1)):
        params, losses = reference_fit(quad, P0, optax.adam(lr), 20, key)
        np.testing.assert_allclose(np.asarray(res.params["m"]), np.asarray(params["m"]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.losses, losses, rtol=1e-4, atol=1e-5)


def _gated_sgd(lr):
    """SGD whose update branches in Python on its learning rate: it cannot be traced as data."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        scale = -lr if lr < 1.0 else -1.0
        return jax.tree_util.tree_map(lambda g: scale * g, updates), state

    return optax.GradientTransformation(init, update)


def test_python_control_flow_hyperparameters_stay_static():
    spec = fit_mod._optimizer_spec(_gated_sgd(0.1), P0, optax.EmptyState())
    assert not spec.lifted
    n0 = fit_mod._chunk._cache_size()
    a, b = run(n=10, key=5, opt=_gated_sgd(0.1)), run(n=10, key=5, opt=_gated_sgd(0.2))
    run(n=10, key=5, opt=_gated_sgd(0.1))
    assert fit_mod._chunk._cache_size() == n0 + 2  # one program per value, reused for an equal one
    for res, lr in ((a, 0.1), (b, 0.2)):
        params, _ = reference_fit(quad, P0, _gated_sgd(lr), 10, jax.random.key(5))
        np.testing.assert_allclose(np.asarray(res.params["m"]), np.asarray(params["m"]), rtol=1e-4, atol=1e-5)
    assert fit_mod._optimizer_spec(optax.adam(1e-2), P0, optax.adam(1e-2).init(P0)).lifted


def _scaled(c):
    @vi.expectation
    def scaled(key, p):
        return c * quad.fn(key, p)

    return scaled


def test_fresh_objectives_share_a_program_but_not_constants():
    run(n=10, obj=_scaled(1.0))
    n0 = fit_mod._chunk._cache_size()
    a = run(n=10, obj=_scaled(1.0))  # built anew from the same pieces: the same program
    assert fit_mod._chunk._cache_size() == n0
    b = run(n=10, obj=_scaled(0.01))  # another constant in the closure: another program
    assert fit_mod._chunk._cache_size() == n0 + 1
    np.testing.assert_allclose(a.losses, run(n=10).losses, rtol=1e-6)
    # Adam is invariant to the objective's scale (up to eps): the losses scale by the constant
    np.testing.assert_allclose(b.losses, 0.01 * a.losses, rtol=1e-3)
