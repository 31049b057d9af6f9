"""Errors raised by the modeling language.

Every error is a :class:`ModelError` (or subclass) whose message names the address involved and
says how to fix the problem. They are raised at JAX trace time wherever possible.

Examples:
    >>> import ppl
    >>> @ppl.gen
    ... def model():
    ...     ppl.normal(0.0, 1.0) @ "x"
    ...     ppl.normal(0.0, 1.0) @ "x"
    >>> try:
    ...     model.simulate(__import__("jax").random.key(0))
    ... except ppl.AddressError as e:
    ...     print("address 'x'" in str(e))
    True
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of all modeling errors. The message names the address and suggests a fix."""


class AddressError(ModelError, KeyError):
    """An address is reused, missing, or never visited by the model."""

    def __str__(self):  # KeyError would otherwise repr() the message
        return self.args[0] if self.args else ""


class ShapeError(ModelError, ValueError):
    """A choice value has the wrong shape or dtype for its site."""


class ParameterError(ModelError, ValueError):
    """A distribution received invalid parameters (e.g. a negative scale)."""


class TracedControlFlowError(ModelError, TypeError):
    """Python control flow depended on a sampled (traced) value."""


class NotGenerativeError(ModelError, TypeError):
    """Something that is not a generative function was used with ``@ "addr"``."""


class CarryShapeError(ModelError, TypeError):
    """A ``ppl.scan`` step function returned a carry of a different shape/dtype than it received."""


class ArgumentError(ModelError, TypeError):
    """An API argument has the wrong kind, e.g. model arguments not given as a tuple."""


class NonFiniteError(ModelError, FloatingPointError):
    """A log density, weight or gradient was not finite (reported in debug mode)."""


def fmt_addr(path) -> str:
    """Format an address path for error messages: ``("a", "b")`` -> ``'a' / 'b'``."""
    if isinstance(path, str):
        return repr(path)
    path = tuple(path)
    if not path:
        return "<root>"
    return " / ".join(repr(p) for p in path)
