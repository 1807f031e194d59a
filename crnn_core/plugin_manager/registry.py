"""Registries: name -> component class, one per component kind, with provider tracking.

A registry refuses a duplicate name (naming both providers), checks that a class
derives from the kind's base class, and answers an unknown name with a
"did you mean" suggestion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from ..base.errors import ConfigError, PluginError, closest

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, class and the plugin that provided it."""

    name: str
    cls: T
    provider: str

    @property
    def doc(self) -> str:
        """First line of the class docstring (used by ``crnn list``)."""
        text = (self.cls.__doc__ or "").strip()
        return text.splitlines()[0] if text else ""


class Registry(Generic[T]):
    """Maps component names to classes for one kind (cells, init strategies, ...)."""

    def __init__(self, kind: str, base: type, list_name: str) -> None:
        self.kind = kind  # singular, for messages: "cell"
        self.base = base  # every registered class must subclass it
        self.list_name = list_name  # `crnn list <list_name>`
        self._entries: dict[str, Entry] = {}

    def register(self, cls: T, provider: str, name: str | None = None) -> str:
        """Add ``cls`` under ``name`` (default ``cls.name``); errors name the provider."""
        if not isinstance(cls, type) or not issubclass(cls, self.base):
            raise PluginError(
                f"plugin '{provider}' registered {cls!r} as a {self.kind}, "
                f"but it is not a subclass of {self.base.__module__}.{self.base.__name__}"
            )
        name = name or getattr(cls, "name", None)
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise PluginError(f"plugin '{provider}' registered {self.kind} {cls.__name__} without a valid name")
        if name in self._entries:
            other = self._entries[name]
            raise PluginError(
                f"duplicate {self.kind} '{name}': provided by both '{other.provider}' "
                f"({other.cls.__module__}.{other.cls.__name__}) and '{provider}' "
                f"({cls.__module__}.{cls.__name__})"
            )
        self._entries[name] = Entry(name, cls, provider)
        return name

    def unregister(self, name: str, cls: type) -> None:
        """Remove ``name`` if it is still ``cls`` (rolling back a plugin that failed)."""
        entry = self._entries.get(name)
        if entry is not None and entry.cls is cls:
            del self._entries[name]

    def get(self, name: str) -> Entry:
        """The entry for ``name``, or a ConfigError with a suggestion."""
        try:
            return self._entries[name]
        except KeyError:
            pass
        close = closest(name, self._entries)
        hint = f" Did you mean '{close}'?" if close else ""
        raise ConfigError(f"Unknown {self.kind} '{name}'.{hint} (see: crnn list {self.list_name})")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
