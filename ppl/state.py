"""Thread-local tracing state and interceptors: the address path of the site being traced, the
active ``@gen`` handlers, and :class:`Interceptor` hooks that inference code installs around GFI
calls.

Everything here is per thread (``threading.local``), so models can be traced from several
threads at once.

Examples:
    >>> import jax, ppl
    >>> from ppl.state import current_path
    >>> @ppl.gen
    ... def m():
    ...     seen.append(current_path())
    ...     return ppl.normal(0.0, 1.0) @ "x"
    >>> seen = []
    >>> _ = m.simulate(jax.random.key(0))
    >>> seen[0], current_path()
    ((), ())
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["STATE", "current_path", "push_path", "Interceptor", "intercept", "active_interceptor"]


class _State(threading.local):
    """Per-thread tracing state (one instance, :data:`STATE`)."""

    def __init__(self):
        self.path: list[str] = []  # address path of the site being traced
        self.handlers: list = []  # active @gen handlers (innermost last)
        self.stage_depth = 0  # > 0 while inside a staged (jitted) GFI call
        self.interceptors: list = []
        self.debug = False
        self.gfi_depth = 0  # nesting depth of GFI calls while an interceptor is active
        self.branch_depth = 0  # > 0 while tracing the branches of a ppl.cond/switch/mix


STATE = _State()


def current_path() -> tuple:
    """The full address path of the site being traced (empty outside models)."""
    return tuple(STATE.path)


@contextlib.contextmanager
def push_path(addr: str):
    """Trace the enclosed block at ``addr`` below the current path (used by combinators)."""
    STATE.path.append(addr)
    try:
        yield
    finally:
        STATE.path.pop()


# ------------------------------------------------------------------------------ interceptors
class Interceptor:
    """Hook into distribution sites during any GFI method (used by inference code).

    ``sample`` replaces drawing a fresh value; ``observe`` maps a given (constrained) value to the
    value stored in the trace plus an extra log-weight term and the value to report in ``update``'s
    discard. Subclasses override ``handles(path)`` to pick sites. Interceptors are active for the
    duration of a ``with ppl.core.intercept(obj):`` block, during tracing.

    Examples:
        >>> import jax, ppl
        >>> class Zero(Interceptor):
        ...     def sample(self, path, gf, d, key):
        ...         return jax.numpy.zeros(d.shape())
        >>> with intercept(Zero()):
        ...     tr = ppl.normal.simulate(jax.random.key(0), 3.0, 1.0)
        >>> float(tr.retval)
        0.0
    """

    #: If True, ``observe`` receives given values before the site's shape/dtype check (e.g. an
    #: unconstrained vector of another shape) and the value it returns is checked instead.
    raw_values = False

    #: If True, the normal sites it handles may still have their log densities computed together,
    #: one vectorized call per ``@gen`` execution (:mod:`ppl.scores`); set it when the
    #: interceptor neither reads nor replaces site log densities.
    scores_deferrable = False

    #: If True, every site it handles keeps its old value in ``update`` (``observe`` returns the old
    #: value): a site whose value is given is then not a changed value, so ``update`` may keep the
    #: sites that depend only on it as they were (:mod:`ppl.changes`). Sites it handles are always
    #: visited.
    keeps_values = False

    def handles(self, path: tuple) -> bool:
        return True

    def sample(self, path, gf, d, key):
        return gf.draw(d, key)

    def observe(self, path, gf, d, value, old_value):
        """Return ``(value_for_trace, extra_log_weight, discard_value)``."""
        return value, 0.0, old_value

    def returned(self, gf, method, out):
        """Called with the result of every outermost GFI call made while the interceptor is active
        (e.g. ``guide.simulate(...)`` in a program); returns the result to hand back."""
        return out


@contextlib.contextmanager
def intercept(interceptor: Interceptor):
    """Activate an :class:`Interceptor` while tracing the enclosed GFI calls."""
    STATE.interceptors.append(interceptor)
    try:
        yield interceptor
    finally:
        STATE.interceptors.pop()


def active_interceptor(path: tuple):
    """The innermost active :class:`Interceptor` that handles ``path``, or None."""
    for icpt in reversed(STATE.interceptors):
        if icpt.handles(path):
            return icpt
    return None
