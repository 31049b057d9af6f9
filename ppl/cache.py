"""Persistent compilation cache: compiled programs kept on disk between processes.

JAX compiles every staged GFI call and inference program with XLA the first time it runs in a
process. With the persistent cache on, the compiled executables are written to a folder and a
later process that stages the same program (same model code, same argument shapes and dtypes,
same JAX version and backend) loads them instead of compiling again.

The ``ppl`` command turns the cache on by default (in :func:`default_cache_dir`; ``ppl
--no-compilation-cache`` or ``PPL_COMPILATION_CACHE=0`` turn it off). Library users call
:func:`enable_compilation_cache` once, before the first compiled call.

:func:`cache_stats` counts this process's persistent-cache hits and misses (from JAX's own
monitoring events), so a script can check that a second run was served from the cache.
"""

from __future__ import annotations

import os
import threading

import jax

__all__ = ["enable_compilation_cache", "disable_compilation_cache", "default_cache_dir", "cache_stats",
           "compilation_cache_dir"]

_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_MISS_EVENT = "/jax/compilation_cache/cache_misses"

_LOCK = threading.Lock()
_COUNTS = {"hits": 0, "misses": 0}
_LISTENING = [False]


def _on_event(event: str, **kwargs):
    if event == _HIT_EVENT:
        with _LOCK:
            _COUNTS["hits"] += 1
    elif event == _MISS_EVENT:
        with _LOCK:
            _COUNTS["misses"] += 1


def _listen():
    if not _LISTENING[0]:
        jax.monitoring.register_event_listener(_on_event)
        _LISTENING[0] = True


def default_cache_dir() -> str:
    """The folder the ``ppl`` command caches compiled programs in.

    ``$PPL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ppl/jax`` (``~/.cache/ppl/jax`` when
    ``XDG_CACHE_HOME`` is unset).

    Examples:
        >>> import os, ppl.cache
        >>> ppl.cache.default_cache_dir().endswith(os.path.join("ppl", "jax")) or "PPL_CACHE_DIR" in os.environ
        True
    """
    if os.environ.get("PPL_CACHE_DIR"):
        return os.environ["PPL_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ppl", "jax")


def enable_compilation_cache(path: str | None = None, min_compile_time_s: float = 0.0) -> str:
    """Keep compiled programs on disk in ``path`` (default :func:`default_cache_dir`) and reuse them.

    Call it once, before the first compiled call of the process (programs compiled earlier are not
    written). ``min_compile_time_s``: programs that compiled faster than this are not stored (JAX's
    default is 1 s; 0 stores every program, which suits the many small programs of a model).
    Returns the folder used. The cache is keyed by the program, the JAX version and the backend,
    so a stale entry is never loaded for changed code; delete the folder to reclaim disk space.

    Examples:
        >>> import tempfile, ppl
        >>> d = ppl.enable_compilation_cache(tempfile.mkdtemp())
        >>> ppl.cache.compilation_cache_dir() == d
        True
        >>> ppl.disable_compilation_cache()
    """
    path = os.path.abspath(os.path.expanduser(path or default_cache_dir()))
    os.makedirs(path, exist_ok=True)
    _listen()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset_jax_cache_state()
    return path


def disable_compilation_cache() -> None:
    """Stop reading and writing the persistent compilation cache (in-memory caching is unaffected).

    Examples:
        >>> import ppl
        >>> ppl.disable_compilation_cache()
        >>> ppl.cache.compilation_cache_dir() is None
        True
    """
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)
    _reset_jax_cache_state()


def compilation_cache_dir() -> str | None:
    """The folder compiled programs are cached in, or ``None`` when the persistent cache is off.

    Examples:
        >>> import ppl
        >>> ppl.disable_compilation_cache(); ppl.cache.compilation_cache_dir() is None
        True
    """
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir


def _reset_jax_cache_state():
    # JAX initialises its cache object once per process, on the first compilation; a later change of
    # folder only takes effect after this reset (a public function of jax's compilation-cache module).
    try:
        from jax.experimental.compilation_cache import compilation_cache as cc
    except ImportError:  # pragma: no cover
        return
    reset = getattr(cc, "reset_cache", None)
    if reset is not None:
        reset()


def cache_stats() -> dict:
    """Persistent-cache hits and misses of this process since the cache was enabled.

    Returns ``{"hits": int, "misses": int}``: one hit per compiled program loaded from disk, one
    miss per program compiled (and then written).

    Examples:
        >>> import ppl
        >>> sorted(ppl.cache.cache_stats())
        ['hits', 'misses']
    """
    with _LOCK:
        return dict(_COUNTS)
