"""Name -> object registries (timm-style): config strings name encoders, fusions, readers,
content builders and model heads."""
from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable:
        """`@registry.register("name")` on a class or function, or `register("name", obj)`."""
        def deco(o):
            self._entries[name] = o
            return o
        return deco(obj) if obj is not None else deco

    def __getitem__(self, name: str):
        if name not in self._entries:
            raise KeyError(f"unknown {self.what} '{name}' (known: {', '.join(self._entries) or 'none'})")
        return self._entries[name]

    def get(self, name: str, default=None):
        return self._entries.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
