"""Change notification for the plain models: callbacks called in the order they connected.

A Qt signal would tie the models to QtCore, which ``viewer.model`` does not import (so models are
tested without a QApplication). The API mirrors a signal's (``connect``, ``disconnect``,
``emit``), so a widget binds to a model the way it binds to a Qt object. UI thread only.
"""

from __future__ import annotations

from typing import Callable


class Notifier:
    """A list of callbacks; ``emit(*args)`` calls each one still connected, in order."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., None]] = []

    def connect(self, callback: Callable[..., None]) -> None:
        self._callbacks.append(callback)

    def disconnect(self, callback: Callable[..., None]) -> None:
        """Remove ``callback`` (ValueError when it is not connected, as Qt raises)."""
        self._callbacks.remove(callback)

    def emit(self, *args: object) -> None:
        for callback in tuple(self._callbacks):
            # A callback disconnected by an earlier one during this emit is skipped, as in Qt.
            if callback in self._callbacks:
                callback(*args)


class Fields:
    """Named values that notify ``changed(name)`` for each one :meth:`set` actually changes.

    Subclasses list their fields in ``FIELDS`` and set their defaults in ``__init__``; changes go
    through :meth:`set` (a plain assignment would not notify anyone).
    """

    FIELDS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.changed = Notifier()

    def set(self, **changes: object) -> None:
        for name in changes:
            if name not in self.FIELDS:
                raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        for name, value in changes.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
                self.changed.emit(name)
