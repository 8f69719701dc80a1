"""The open slides: which are open (by resolved path), which are being opened, which one is shown,
each one's viewport, and the recent files remembered between sessions.

The registry holds whatever the workers read a slide through (``viewer.workers.sources.SharedSource``
in the app; anything in tests) without knowing its type, so this module needs neither Qt nor a
slide reader. Settings are any object with QSettings' ``value`` / ``setValue``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from viewer.model.notify import Notifier
from viewer.model.viewport import Viewport

S = TypeVar("S")


class SettingsStore(Protocol):
    """What the models need of ``QSettings`` (a dict-backed fake in tests)."""

    def value(self, key: str, defaultValue: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...


def resolved(path: str | Path) -> str:
    """The key a file is known by: its absolute, resolved path."""
    return str(Path(path).resolve())


class RecentFiles:
    """Most-recent-first list of paths, without duplicates, at most ``limit`` long. With a
    ``store``, every change is written to its ``key`` (and :meth:`stored` reads it back)."""

    def __init__(self, paths: list[str] | None = None, limit: int = 10, store: SettingsStore | None = None,
                 key: str = "") -> None:
        self.limit = limit
        self.paths: list[str] = []
        self._store, self._key = store, key
        for p in reversed(paths or []):
            self._add(p)

    @classmethod
    def stored(cls, store: SettingsStore, key: str, limit: int = 10) -> "RecentFiles":
        return cls(list(store.value(key, []) or []), limit, store, key)

    def add(self, path: str | Path) -> None:
        self._add(path)
        self._save()

    def remove(self, path: str | Path) -> None:
        path = resolved(path)
        if path in self.paths:
            self.paths.remove(path)
        self._save()

    def _add(self, path: str | Path) -> None:
        path = resolved(path)
        if path in self.paths:
            self.paths.remove(path)
        self.paths.insert(0, path)
        del self.paths[self.limit :]

    def _save(self) -> None:
        if self._store is not None:
            self._store.setValue(self._key, self.paths)


@dataclass
class OpenSlide(Generic[S]):
    """One open slide: its key (resolved path), what workers read it through, and the viewport to
    restore when it is shown again (None until it is first shown)."""

    key: str
    shared: S
    viewport: Viewport | None = None


class Workspace(Generic[S]):
    """The registry of open slides. Notifies ``slide_added(entry)``, ``slide_removed(entry)`` and
    ``current_changed(entry or None)``; ``slides`` keeps the order they were opened in."""

    def __init__(self, recent: RecentFiles) -> None:
        self.recent = recent
        self.slides: dict[str, OpenSlide[S]] = {}
        self.current_key: str | None = None
        self.opening: set[str] = set()
        self.slide_added = Notifier()
        self.slide_removed = Notifier()
        self.current_changed = Notifier()

    @property
    def current(self) -> OpenSlide[S] | None:
        return self.slides.get(self.current_key) if self.current_key else None

    def begin_opening(self, key: str) -> bool:
        """Mark ``key`` as being opened; False when it is open or already being opened."""
        if key in self.slides or key in self.opening:
            return False
        self.opening.add(key)
        return True

    def open_failed(self, key: str) -> None:
        """The file could not be opened: it is no longer a recent file."""
        self.opening.discard(key)
        self.recent.remove(key)

    def abandon(self, key: str) -> None:
        """The file opened after the viewer started shutting down: forget it."""
        self.opening.discard(key)

    def add(self, key: str, shared: S) -> OpenSlide[S]:
        self.opening.discard(key)
        entry = OpenSlide(key, shared)
        self.slides[key] = entry
        self.recent.add(key)
        self.slide_added.emit(entry)
        return entry

    def show(self, key: str) -> bool:
        """Make the open slide ``key`` the shown one; False when it already is."""
        if self.current_key == key:
            return False
        self.current_key = key
        self.current_changed.emit(self.slides[key])
        return True

    def close_current(self) -> OpenSlide[S] | None:
        """Forget the shown slide (nothing is shown afterwards) and return its entry."""
        entry = self.current
        if entry is None:
            return None
        del self.slides[entry.key]
        self.current_key = None
        self.current_changed.emit(None)
        self.slide_removed.emit(entry)
        return entry

    def clear(self) -> list[OpenSlide[S]]:
        """Forget every slide without notifying (shutdown); returns their entries."""
        entries = list(self.slides.values())
        self.slides.clear()
        self.current_key = None
        return entries
