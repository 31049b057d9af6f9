"""The ``@gen`` tracing DSL.

Inside a ``@gen`` function, ``gf(*args) @ "addr"`` traces a call to a generative function (a
distribution, another ``@gen`` function or a combinator) at an address. The effect handler that
interprets ``@`` runs while JAX traces the function, so a jitted GFI method compiles to plain JAX:
no per-site Python work is left in the compiled program.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def group_model(mu, n):
    ...     return ppl.normal(jnp.full(n, mu), 1.0) @ "theta"
    >>> @ppl.gen
    ... def hierarchical(n):
    ...     mu = ppl.normal(0.0, 5.0) @ "mu"
    ...     return group_model(mu, n) @ "group"
    >>> tr = hierarchical.simulate(jax.random.key(0), 3)
    >>> tr.choices["group", "theta"].shape
    (3,)
"""

from __future__ import annotations

import dataclasses
import functools
import linecache
import re
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpyro.distributions as _nd

from .choicemap import ChoiceMap
from .core import (
    STATE,
    GenerativeFunction,
    Invocation,
    Trace,
    add,
    check_constraints_visited,
    current_path,
    pack_args,
    push_path,
    site_key,
    trace_dataclass,
)
from .errors import (
    AddressError,
    ModelError,
    NotGenerativeError,
    TracedControlFlowError,
    fmt_addr,
)
from .changes import NO_PLAN, dependency_site, site_plan
from .sitekeys import _DISCOVERING, _discovery_site, _given_value, _site_keys
from .scores import Deferred, ScoreSink, active_sink, batching

_NORMAL = _nd.Normal

__all__ = ["gen", "GenFn", "GenTrace"]


@trace_dataclass
class GenTrace(Trace):
    """Trace of a ``@gen`` function: its arguments, return value, score and subtraces by address."""

    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    subtraces: dict

    def get_choices(self) -> ChoiceMap:
        children = {}
        for addr, sub in self.subtraces.items():
            children[addr] = sub.get_choices()
        return ChoiceMap.from_children(children)

    def get_scores(self) -> ChoiceMap:
        return ChoiceMap.from_children({addr: sub.get_scores() for addr, sub in self.subtraces.items()})

    def get_subtrace(self, addr):
        path = addr if isinstance(addr, tuple) else (addr,)
        tr = self
        for i, part in enumerate(path):
            if not isinstance(tr, GenTrace) or part not in tr.subtraces:
                raise AddressError(f"no subtrace at {fmt_addr(path[: i + 1])}")
            tr = tr.subtraces[part]
        return tr


class _Handler:
    """Interprets ``@`` for one execution of a ``@gen`` body in one GFI mode."""

    def __init__(self, gf, mode, key=None, constraints=None, old=None, selection=None, plan=NO_PLAN):
        self.gf = gf
        self.plan = plan  # update/regenerate: the sites kept as they were (ppl.changes)
        self.mode = mode
        self.key = key
        self.constraints = constraints
        self.old = old
        self.selection = selection
        self.subtraces: dict = {}
        self.score = 0.0
        self.weight = 0.0
        self.discard: dict = {}
        self.last_addr = None
        self.sink = None  # this execution's pending normal-site log densities (ppl.scores)

    def _sink_for(self, gf):
        """The sink a direct ``normal`` site may defer its log density to (see :mod:`ppl.scores`)."""
        if not batching() or getattr(gf, "builder", None) is not _NORMAL or STATE.debug:
            return None
        if STATE.interceptors and not all(getattr(i, "scores_deferrable", False) for i in STATE.interceptors):
            return None
        if self.sink is None:
            self.sink = ScoreSink()
        return self.sink

    def _site_key(self, addr, gf):
        """The site's key; a distribution site that keeps its value (update, or regenerate when not
        selected) or is given one (generate) draws nothing, so it gets the execution's key without
        a derivation of its own."""
        if getattr(gf, "builder", None) is not None:
            from . import keys as _keys

            if self.old is not None and addr in self.old.subtraces:
                if self.mode == "update" or not self.selection.child(addr).has_root():
                    return _keys.raw(self.key)
            elif self.mode == "generate" and _given_value(self.constraints, addr):
                return _keys.raw(self.key)
        return site_key(self.key, addr)

    def resolve_scores(self):
        """Compute the deferred site log densities (one call per shape) and fill them in."""
        sink = self.sink
        if sink is None:
            return
        for addr, tr in self.subtraces.items():
            if isinstance(getattr(tr, "score", None), Deferred):
                self.subtraces[addr] = dataclasses.replace(tr, score=sink.resolve(tr.score))
        self.score = sink.resolve(self.score)
        self.weight = sink.resolve(self.weight)
        self.sink = None

    def _edit(self, gf, method, addr):
        """``gf``'s ``update``/``regenerate`` for the site at ``addr``: a nested ``@gen`` call of a
        planned execution gets a plan of its own (its arguments same or changed)."""
        if addr in self.plan.calls:
            return functools.partial(getattr(gf, "_" + method), _same_args=addr in self.plan.same_args)
        if addr in self.plan.same_params:  # given to an interceptor that keeps it: old log density
            return functools.partial(gf._update, _same_params=True)
        return getattr(gf, method)

    def visit(self, addr, gf, args):
        if not isinstance(addr, str):
            raise AddressError(
                f"address {addr!r} in {self.gf.name} is not a string; write `... @ \"name\"` "
                "(nesting a generative function call makes tuple addresses automatically)."
            )
        if addr in self.subtraces:
            raise AddressError(
                f"address {fmt_addr(current_path() + (addr,))} is used twice in one execution of "
                f"{self.gf.name}; every random choice needs its own address (e.g. f\"x_{{i}}\" in a "
                "loop, or use ppl.vmap / gf.repeat for independent copies)."
            )
        if not isinstance(gf, GenerativeFunction):
            raise NotGenerativeError(
                f"{gf!r} at address {fmt_addr(current_path() + (addr,))} is not a generative function"
            )
        self.last_addr = addr
        mode = self.mode
        if mode == "deps":  # the dependency trace of ppl.changes
            self.subtraces[addr] = None
            with push_path(addr):
                return dependency_site(addr, gf, args, self.old.subtraces.get(addr))
        if addr in self.plan.kept:  # update/regenerate: value and parameters unchanged
            tr = self.old.subtraces[addr]
            self.subtraces[addr] = tr
            self.score = add(self.score, tr.score)
            return tr.value
        with push_path(addr), active_sink(self._sink_for(gf)):
            if mode == "assess":
                lp, retval = gf.assess(self.constraints.get_submap(addr), *args)
                self.subtraces[addr] = None
                self.score = add(self.score, lp)
                return retval
            key = None if mode == "simulate" else self._site_key(addr, gf)
            if mode == "simulate":
                # in a discovery run a distribution site is a stand-in: nothing drawn or scored
                tr = _discovery_site(addr, gf, args) if _DISCOVERING.depth else None
                if tr is None:
                    tr = gf.simulate(self._site_key(addr, gf), *args)
            elif mode == "generate":
                tr, w = gf.generate(key, self.constraints.get_submap(addr), *args)
                self.weight = add(self.weight, w)
            elif mode == "update":
                sub = self.constraints.get_submap(addr)
                if addr in self.old.subtraces:
                    tr, w, d = self._edit(gf, "update", addr)(key, self.old.subtraces[addr], sub, *args)
                    if not d.is_empty():
                        self.discard[addr] = d
                else:
                    tr, w = gf.generate(key, sub, *args)
                self.weight = add(self.weight, w)
            elif mode == "regenerate":
                if addr in self.old.subtraces:
                    edit = self._edit(gf, "regenerate", addr)
                    tr, w, d = edit(key, self.old.subtraces[addr], self.selection.child(addr), *args)
                    if not d.is_empty():
                        self.discard[addr] = d
                    self.weight = add(self.weight, w)
                else:
                    tr = gf.simulate(key, *args)
            else:  # pragma: no cover
                raise ValueError(mode)
        self.subtraces[addr] = tr.strip()
        self.score = add(self.score, tr.score)
        return tr.retval


_ADDR_RE = re.compile(r"""@\s*(['"])(.*?)\1""")


def _user_line(exc: BaseException, fn: Callable):
    """The source line of ``fn`` where ``exc`` was raised, if any."""
    code = getattr(fn, "__code__", None)
    for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if code is not None and frame.f_code is code:
            return linecache.getline(code.co_filename, lineno).strip(), lineno
    return None, None


class GenFn(GenerativeFunction):
    """A generative function written as a Python function with ``@gen``.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def coin():
        ...     p = ppl.beta(1.0, 1.0) @ "p"
        ...     return ppl.flip(p) @ "toss"
        >>> sorted(a for a, _ in coin.simulate(jax.random.key(0)).choices)
        ['p', 'toss']
    """

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"@gen expects a function, got {fn!r}")
        self.fn = fn
        self.name = getattr(fn, "__name__", "gen_fn")
        functools.update_wrapper(self, fn)
        self._globals = _global_snapshot(fn)

    def _execute(self, handler: _Handler, args):
        STATE.handlers.append(handler)
        try:
            retval = self.fn(*args)
            handler.resolve_scores()
            return retval
        except ModelError:
            raise
        except (jax.errors.TracerBoolConversionError, jax.errors.ConcretizationTypeError,
                jax.errors.TracerIntegerConversionError) as e:
            line, lineno = _user_line(e, self.fn)
            where = f" (line {lineno}: `{line}`)" if line else ""
            last = handler.last_addr
            after = f" after address {fmt_addr(current_path() + (last,))}" if last else ""
            raise TracedControlFlowError(
                f"{self.name}: Python control flow or a Python conversion depends on a sampled "
                f"(traced) value{after}{where}. Sampled values are JAX tracers: use ppl.cond / "
                "ppl.switch for stochastic branching, jnp.where for elementwise choices, and pass "
                "static values (Python ints) as model arguments for loops."
            ) from e
        except TypeError as e:
            msg = str(e)
            if "@" in msg or "matmul" in msg:
                line, lineno = _user_line(e, self.fn)
                m = _ADDR_RE.search(line or "")
                if m:
                    addr = m.group(2)
                    raise NotGenerativeError(
                        f"{self.name}, line {lineno}: the value used with @ {addr!r} at address "
                        f"{fmt_addr(current_path() + (addr,))} is not a generative function call "
                        f"(`{line}`). Use a distribution such as ppl.normal(...), ppl.dist(numpyro_dist), "
                        "or decorate the called function with @ppl.gen."
                    ) from e
            raise
        finally:
            STATE.handlers.pop()

    def _finish_check(self, handler, constraints, method):
        check_constraints_visited(constraints, handler.subtraces, f"{self.name}.{method}")

    def _make_trace(self, args, retval, handler):
        return GenTrace(self, pack_args(args), retval, handler.score if handler.subtraces else jnp.zeros(()),
                        handler.subtraces)

    def _simulate(self, key, *args):
        h = _Handler(self, "simulate", key=_site_keys(self, key, args, fresh=True))
        retval = self._execute(h, args)
        return self._make_trace(args, retval, h)

    def _assess(self, choices, *args):
        h = _Handler(self, "assess", constraints=choices)
        retval = self._execute(h, args)
        self._finish_check(h, choices, "assess")
        return (h.score if h.subtraces else jnp.zeros(())), retval

    def _generate(self, key, constraints, *args):
        h = _Handler(self, "generate", key=_site_keys(self, key, args, constraints, fresh=True),
                     constraints=constraints)
        retval = self._execute(h, args)
        self._finish_check(h, constraints, "generate")
        w = h.weight if not isinstance(h.weight, float) else jnp.zeros(())
        return self._make_trace(args, retval, h), w

    def _update(self, key, trace, constraints, *args, _same_args=None):
        self._check_trace(trace, "update")
        plan = site_plan(self, args, trace, "update", constraints, _same_args)
        h = _Handler(self, "update", key=_site_keys(self, key, args, plan=plan), constraints=constraints, old=trace,
                     plan=plan)
        retval = self._execute(h, args)
        self._finish_check(h, constraints, "update")
        return self._edit_result(args, retval, h, trace)

    def _regenerate(self, key, trace, selection, *args, _same_args=None):
        self._check_trace(trace, "regenerate")
        plan = site_plan(self, args, trace, "regenerate", selection, _same_args)
        h = _Handler(self, "regenerate", key=_site_keys(self, key, args, plan=plan), old=trace, selection=selection,
                     plan=plan)
        retval = self._execute(h, args)
        return self._edit_result(args, retval, h, trace)

    def _edit_result(self, args, retval, h, trace):
        discard = dict(h.discard)
        w = h.weight
        for addr, sub in trace.subtraces.items():
            if addr not in h.subtraces:  # removed because the control path changed
                discard[addr] = sub.get_choices()
                if h.mode == "update":  # Gen's update: -log p of removed choices (regenerate: 0)
                    w = add(w, -sub.score)
        w = w if not isinstance(w, float) else jnp.zeros(())
        return self._make_trace(args, retval, h), w, ChoiceMap.from_children(discard)

    def _check_trace(self, trace, method):
        if not isinstance(trace, GenTrace) or trace.gf != self:
            owner = getattr(getattr(trace, "gf", None), "name", type(trace).__name__)
            raise ModelError(
                f"{self.name}.{method} at {fmt_addr(current_path())}: got a trace of {owner}, not "
                f"of {self.name}"
            )

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError(
                f"{self.name}: pass arguments positionally when calling a generative function in a model"
            )
        return Invocation(self, args)

    # Two @gen functions are equal when they run the same code with the same captured objects:
    # the same closure cells, defaults, and the same values of the module globals the code reads
    # (snapshotted when the function is decorated). So a helper model defined inside another
    # model's body (a new object at every execution) keeps traces' static structure stable across
    # executions (jit caches, lax.switch/scan), while a *new definition* that reads different
    # globals (e.g. ``@gen`` in a loop over a global, or a redefinition after changing a global)
    # never reuses the compiled program of an earlier definition.
    def _identity(self):
        fn = self.fn
        code = getattr(fn, "__code__", None)
        if code is None:
            return (fn,)
        cells = tuple(c.cell_contents if _cell_filled(c) else _EMPTY for c in (fn.__closure__ or ()))
        return (code, fn.__defaults__, cells, self._globals)

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, GenFn):
            return NotImplemented
        a, b = self._identity(), other._identity()
        if len(a) != len(b) or a[0] is not b[0]:
            return False
        if len(a) == 1:
            return False
        if getattr(self.fn, "__globals__", None) is not getattr(other.fn, "__globals__", None):
            return False
        return (_same_objects(a[1] or (), b[1] or ()) and _same_objects(a[2], b[2])
                and _same_objects(a[3], b[3]))

    def __hash__(self):
        return hash(getattr(self.fn, "__code__", self.fn))

    def __repr__(self):
        return f"<@gen {self.name}>"


_EMPTY = object()


def _global_names(code, out: set):
    out.update(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):  # nested functions, lambdas, comprehensions
            _global_names(c, out)
    return out


def _global_snapshot(fn) -> tuple:
    """The values of the module globals ``fn``'s code may read, at decoration time (names not
    bound there, e.g. attribute names and builtins, are recorded as ``_EMPTY``)."""
    code = getattr(fn, "__code__", None)
    g = getattr(fn, "__globals__", None)
    if code is None or g is None:
        return ()
    snap = []
    for name in sorted(_global_names(code, set())):
        snap.append(g.get(name, _EMPTY))
    return tuple(snap)


def _cell_filled(cell):
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def _same_objects(xs, ys) -> bool:
    if len(xs) != len(ys):
        return False
    for x, y in zip(xs, ys):
        if x is y:
            continue
        if isinstance(x, GenerativeFunction) and isinstance(y, GenerativeFunction):
            if x != y:
                return False
            continue
        if type(x) is type(y) and isinstance(x, (int, float, str, bool, bytes, type(None))) and x == y:
            continue
        return False
    return True


def gen(fn: Callable) -> GenFn:
    """Decorate a Python function as a generative function.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> float(model.simulate(jax.random.key(0)).retval) == float(
        ...     model.simulate(jax.random.key(0)).choices["x"])
        True
    """
    return GenFn(fn)
