"""Keep Python's cyclic garbage collector from pausing the UI.

A full (generation-2) collection walks every tracked object while holding the GIL, so it stops
every thread, the UI thread included. After torch is imported there are about 250,000 such
objects, and a collection triggered by a job's allocations on a worker was measured to take
71 ms: the single worst event-loop stall of a whole-slide job on the real slide. Objects alive
after start-up and after the engine's first import live as long as the process, so they are
moved to the permanent generation, which collections skip.
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Exempt every object alive now from future collections (cheap: one list splice)."""
    gc.freeze()
