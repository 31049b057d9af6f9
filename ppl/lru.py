"""A small thread-safe least-recently-used cache, for ppl's trace-time caches.

ppl keeps a few caches keyed by a model's static structure (the addresses a ``@gen`` function
visits, the value checks of a compiled program, selections already checked against a trace
structure). They are bounded: when full, the least recently used entry is dropped, so a long
session that builds many models neither grows without bound nor loses all its entries at once.

Examples:
    >>> c = LRUCache(2)
    >>> c["a"] = 1; c["b"] = 2
    >>> c.get("a")
    1
    >>> c["c"] = 3  # evicts "b", the least recently used
    >>> sorted(c.keys())
    ['a', 'c']
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["LRUCache"]

_MISSING = object()


class LRUCache:
    """A mapping holding at most ``maxsize`` entries; reading or writing an entry makes it the most
    recently used, and inserting into a full cache drops the least recently used one."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"LRUCache: maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                return default
            self._data.move_to_end(key)
            return value

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def __setitem__(self, key, value):
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def setdefault(self, key, default):
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                value = self._data[key] = default
                while len(self._data) > self.maxsize:
                    self._data.popitem(last=False)
            self._data.move_to_end(key)
            return value

    def keys(self):
        with self._lock:
            return list(self._data)

    def clear(self):
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __repr__(self):
        return f"LRUCache({len(self._data)}/{self.maxsize})"
