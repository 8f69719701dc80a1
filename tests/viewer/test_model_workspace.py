"""viewer.model.workspace: the open-slides registry and the remembered recent files (no Qt)."""

from __future__ import annotations

from dict_store import DictStore

from viewer.model.notify import Notifier
from viewer.model.workspace import RecentFiles, Workspace, resolved


def test_recent_files_are_most_recent_first_unique_and_bounded(tmp_path):
    recent = RecentFiles(limit=3)
    for name in "abcdb":
        recent.add(tmp_path / name)
    assert [p.split("/")[-1] for p in recent.paths] == ["b", "d", "c"]
    recent.remove(tmp_path / "d")
    assert [p.split("/")[-1] for p in recent.paths] == ["b", "c"]


def test_stored_recent_files_are_read_back_and_every_change_is_written(tmp_path):
    store = DictStore({"recent_files": [str(tmp_path / "old")]})
    recent = RecentFiles.stored(store, "recent_files")
    assert recent.paths == [str(tmp_path / "old")] and store.values["recent_files"] == [str(tmp_path / "old")]
    recent.add(tmp_path / "new")
    assert store.values["recent_files"] == [str(tmp_path / "new"), str(tmp_path / "old")]
    recent.remove(tmp_path / "old")
    assert store.values["recent_files"] == [str(tmp_path / "new")]
    assert RecentFiles.stored(DictStore(), "recent_files").paths == []


def events_of(workspace: Workspace) -> list:
    seen: list = []
    workspace.slide_added.connect(lambda e: seen.append(("added", e.key)))
    workspace.slide_removed.connect(lambda e: seen.append(("removed", e.key)))
    workspace.current_changed.connect(lambda e: seen.append(("current", e.key if e else None)))
    return seen


def test_opening_showing_and_closing_slides(tmp_path):
    store = DictStore()
    ws = Workspace(RecentFiles.stored(store, "recent_files"))
    seen = events_of(ws)
    a, b = resolved(tmp_path / "a.svs"), resolved(tmp_path / "b.svs")
    assert ws.begin_opening(a) and not ws.begin_opening(a)  # a second click while it opens does nothing
    entry_a = ws.add(a, "shared-a")
    assert not ws.begin_opening(a) and a not in ws.opening  # open already
    assert ws.show(a) and not ws.show(a) and ws.current is entry_a and entry_a.shared == "shared-a"
    ws.begin_opening(b)
    ws.add(b, "shared-b")
    ws.show(b)
    assert store.values["recent_files"] == [b, a]
    assert list(ws.slides) == [a, b]  # the order they were opened in
    closed = ws.close_current()
    assert closed.key == b and ws.current is None and list(ws.slides) == [a]
    assert seen == [("added", a), ("current", a), ("added", b), ("current", b), ("current", None), ("removed", b)]
    assert ws.close_current() is None  # nothing shown: nothing to close


def test_a_file_that_fails_to_open_is_no_longer_recent(tmp_path):
    store = DictStore({"recent_files": [str(tmp_path / "bad.svs")]})
    ws = Workspace(RecentFiles.stored(store, "recent_files"))
    key = resolved(tmp_path / "bad.svs")
    ws.begin_opening(key)
    ws.open_failed(key)
    assert key not in ws.opening and store.values["recent_files"] == [] and ws.begin_opening(key)
    ws.abandon(key)
    assert key not in ws.opening and key not in ws.slides


def test_a_viewport_is_kept_per_slide_and_clear_forgets_all(tmp_path):
    ws = Workspace(RecentFiles())
    entry = ws.add("k", object())
    assert entry.viewport is None  # until the view first shows it
    ws.show("k")
    assert [e.key for e in ws.clear()] == ["k"] and not ws.slides and ws.current is None


def test_a_callback_disconnected_during_an_emit_is_not_called():
    notifier, calls = Notifier(), []

    def first():
        calls.append("first")
        if len(calls) == 1:
            notifier.disconnect(second)

    def second():
        calls.append("second")

    notifier.connect(first)
    notifier.connect(second)
    notifier.emit()
    notifier.emit()
    assert calls == ["first", "first"]
