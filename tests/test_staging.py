"""The public staging layer (``ppl.staging``) and the bounded trace-time caches.

- ``staged``: one compiled program per argument structure (static vs data), the debug flag and
  ambient contexts in the compilation key, GFI calls traced inline (no nested staged program per
  GFI call), run-time check failures raised as the ppl error with its own message.
- ``inline`` / ``is_top_level`` / ``callback_errors`` / ``debug_enabled``.
- ``ppl.lru.LRUCache`` and the address cache of ``ppl.sitekeys`` (bounded, least recently used
  dropped); discovery state is per thread (concurrent tracing gives the same keys).
"""

from __future__ import annotations

import contextlib
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl import sitekeys, staging
from ppl.errors import ParameterError
from ppl.lru import LRUCache


@ppl.gen
def model(mu, n):
    x = ppl.normal(jnp.full(n, mu), 1.0) @ "x"
    return ppl.normal(jnp.sum(x), 1.0) @ "y"


class Count:
    def __init__(self):
        self.n = 0


def test_staged_compiles_once_per_argument_structure():
    traces = Count()

    @staging.staged(static_argnames=("model",), packed_argnames=("args",))
    def score(key, model, args):
        traces.n += 1
        return model.simulate(key, *args).score

    a = score(jax.random.key(0), model, (0.5, 3))
    b = score(jax.random.key(0), model=model, args=(1.5, 3))  # new data value, by keyword
    assert traces.n == 1 and score.jitted._cache_size() == 1
    score(jax.random.key(0), model=model, args=[2.5, 3])  # a list is a tuple of arguments
    assert traces.n == 1
    score(jax.random.key(0), model=model, args=(0.5, 4))  # the int is static: a new program
    assert traces.n == 2
    # the same values as calling the GFI method directly, bit for bit
    assert np.asarray(a) == np.asarray(model.simulate(jax.random.key(0), 0.5, 3).score)
    assert np.asarray(b) == np.asarray(model.simulate(jax.random.key(0), 1.5, 3).score)


def _call_names(jaxpr, out=None):
    """The names of every nested jit call in ``jaxpr``."""
    out = [] if out is None else out
    for e in jaxpr.eqns:
        if "name" in e.params:
            out.append(e.params["name"])
        for v in e.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                _call_names(inner, out)
    return out


def test_gfi_calls_inside_a_staged_function_are_inline():
    seen = []

    @staging.staged(static_argnames=("n",))
    def run(key, n):
        seen.append(staging.is_top_level())
        keys = jax.random.split(key, n)
        return [model.simulate(k, 0.0, 2).score for k in keys]

    before = staging._staged_runner._cache_size()
    out = run(jax.random.key(1), 3)
    assert seen == [False]
    assert staging._staged_runner._cache_size() == before  # no program per GFI call
    jaxpr = jax.make_jaxpr(lambda k: run.jitted(k, n=3, _ppl_context=(False, ())))(jax.random.key(1))
    names = _call_names(jaxpr.jaxpr)
    assert "traced" in names and "_staged_runner" not in names
    assert staging.is_top_level()
    want = [model.simulate(k, 0.0, 2).score for k in jax.random.split(jax.random.key(1), 3)]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


def test_debug_flag_is_part_of_the_key_and_errors_come_back_as_ppl_errors():
    @staging.staged()
    def draw(key, scale):
        seen.append(staging.debug_enabled())
        return ppl.normal.simulate(key, 0.0, scale).retval

    seen = []
    draw(jax.random.key(0), jnp.array(-1.0))  # no debug mode: no run-time check
    with ppl.debug():
        with pytest.raises(ParameterError, match="scale") as info:
            draw(jax.random.key(0), jnp.array(-1.0))
        assert "debug-mode run-time check" in str(info.value)
        assert np.isfinite(float(draw(jax.random.key(0), jnp.array(2.0))))
    assert seen == [False, True]
    assert draw.jitted._cache_size() == 2
    assert staging.pop_callback_error() is None  # consumed


def test_contexts_key_the_program_and_are_entered_while_tracing():
    current = {"v": "a"}
    entered = []

    @contextlib.contextmanager
    def enter(v):
        entered.append(v)
        yield

    @staging.staged(contexts=((lambda: current["v"], enter),))
    def f(x):
        return x + 1.0

    f(jnp.ones(2))
    f(jnp.zeros(2))
    current["v"] = "b"
    f(jnp.ones(2))
    assert entered == ["a", "b"] and f.jitted._cache_size() == 2


def test_staged_positional_packed_and_static_arguments():
    @staging.staged(static_argnames=("n",), packed_argnames=("args",))
    def f(key, n, args):
        return model.simulate(key, *args).score * n

    k = jax.random.key(2)
    np.testing.assert_array_equal(np.asarray(f(k, 2, (0.0, 3))), np.asarray(f(k, n=2, args=(0.0, 3))))
    with pytest.raises(TypeError, match="multiple values"):
        f(k, 2, (0.0, 3), n=2)


def test_callback_errors_drops_stale_errors_and_passes_others():
    from ppl.errors import ModelError

    staging._CALLBACK_ERRORS.append(ModelError("stale"))
    with staging.callback_errors():
        pass
    assert staging.pop_callback_error() is None
    with pytest.raises(ValueError, match="other"):
        with staging.callback_errors():
            raise ValueError("other")


def test_inline_and_debug_scope():
    assert staging.is_top_level() and not staging.debug_enabled()
    with staging.inline(debug=True):
        assert not staging.is_top_level() and staging.debug_enabled()
        tr = jax.jit(lambda k: ppl.normal.simulate(k, 0.0, 1.0))(jax.random.key(0))
    assert staging.is_top_level() and not staging.debug_enabled()
    assert tr.choices[()].shape == ()


def test_smc_staged_is_the_public_layer():
    from inference.smc import _util

    assert isinstance(_util.staged(("n",))(lambda key, n: key).jitted, type(staging.staged(lambda x: x).jitted))


# ------------------------------------------------------------------------------ caches
def test_lru_cache_evicts_least_recently_used():
    c = LRUCache(3)
    for i in range(3):
        c[i] = i
    assert c.get(0) == 0  # 0 becomes the most recent
    c[3] = 3
    assert sorted(c.keys()) == [0, 2, 3]
    assert c.setdefault(2, "x") == 2 and c.setdefault(4, "y") == "y"
    assert sorted(c.keys()) == [2, 3, 4] and len(c) == 3
    assert c.get(0, "missing") == "missing"
    with pytest.raises(ValueError):
        LRUCache(0)


def test_address_cache_is_bounded(monkeypatch):
    small = LRUCache(2)
    monkeypatch.setattr(sitekeys, "_ADDRESS_CACHE", small)
    for n in range(3):  # three argument structures (n is static), traced abstractly
        jax.eval_shape(lambda k: model.simulate(k, 0.0, n + 10).score, jax.random.key(0))
    assert len(small) == 2 and all(spec[0] is model for spec in small.keys())
    # an evicted entry is rediscovered and gives the same keys (same draws, bit for bit)
    a = model.simulate(jax.random.key(3), 0.0, 11).choices["x"]
    b = ppl.normal.simulate(ppl.core.site_key(jax.random.key(3), "x"), jnp.zeros(11), 1.0).retval
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_discovery_state_is_per_thread():
    assert isinstance(sitekeys._DISCOVERING, threading.local)
    want = np.asarray(model.simulate(jax.random.key(5), 0.0, 7).choices["x"])
    sitekeys._ADDRESS_CACHE.clear()
    out, errors = [None] * 4, []

    def work(i):
        try:
            out[i] = np.asarray(model.simulate(jax.random.key(5), 0.0, 7).choices["x"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for o in out:
        np.testing.assert_array_equal(o, want)
