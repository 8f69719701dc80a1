"""A settings store for model and controller tests."""

from __future__ import annotations


class DictStore:
    """QSettings' value / setValue over a dict."""

    def __init__(self, values=None):
        self.values = dict(values or {})

    def value(self, key, defaultValue=None):
        return self.values.get(key, defaultValue)

    def setValue(self, key, value):
        self.values[key] = list(value) if isinstance(value, list) else value
