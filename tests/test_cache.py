"""Persistent compilation cache (ppl.cache): a second process loads the first one's programs."""

import json
import os
import subprocess
import sys

PROBE = r"""
import json, sys
import jax, jax.numpy as jnp
import ppl
ppl.enable_compilation_cache(sys.argv[1])

@ppl.gen
def model(n):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    ppl.normal(jnp.full(n, mu), 1.0) @ "y"

obs = ppl.ChoiceMap({"y": jnp.arange(4.0)})
tr, w = model.generate(jax.random.key(0), obs, 4)
print(json.dumps({"stats": ppl.cache.cache_stats(), "w": float(w)}))
"""


def _run(cache_dir):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", PROBE, cache_dir], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_is_served_from_the_cache(tmp_path):
    first = _run(str(tmp_path))
    second = _run(str(tmp_path))
    assert first["stats"]["misses"] >= 1 and first["stats"]["hits"] == 0, first
    assert os.listdir(tmp_path), "nothing was written to the cache folder"
    assert second["stats"]["hits"] >= 1 and second["stats"]["misses"] == 0, second
    assert second["w"] == first["w"]  # same program, same bits


def test_cli_flag_and_environment_turn_the_cache_off(monkeypatch):
    from inference.cli import _cache_wanted, build_parser

    assert _cache_wanted(build_parser().parse_args(["demo"]))
    assert not _cache_wanted(build_parser().parse_args(["--no-compilation-cache", "demo"]))
    monkeypatch.setenv("PPL_COMPILATION_CACHE", "0")
    assert not _cache_wanted(build_parser().parse_args(["demo"]))


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    import ppl

    monkeypatch.delenv("PPL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ppl.cache.default_cache_dir() == os.path.join(str(tmp_path), "ppl", "jax")
    monkeypatch.setenv("PPL_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert ppl.cache.default_cache_dir() == str(tmp_path / "elsewhere")


def test_enable_then_disable_leaves_jax_without_a_cache(tmp_path):
    import ppl

    d = ppl.enable_compilation_cache(str(tmp_path))
    assert ppl.cache.compilation_cache_dir() == d
    ppl.disable_compilation_cache()
    assert ppl.cache.compilation_cache_dir() is None
