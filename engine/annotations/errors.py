"""The one error an annotation file or value raises."""

from __future__ import annotations

from engine.errors import StreamSlideError


class AnnotationError(StreamSlideError, ValueError):
    """An annotation file is malformed, too large, unsafe or unreadable (or cannot be written), or an
    annotation value is impossible.

    The message names the file and the element (feature index, annotation name, line) and what
    was wrong, so the user can fix the file or report it.
    """
