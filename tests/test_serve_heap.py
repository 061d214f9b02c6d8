"""A serving worker freezes what start-up built, so full collections skip it.

With hundreds of streams open, a full collection that walks the whole start-up heap (modules,
config, pricing catalog, pools) pauses the event loop for tens of milliseconds, and every
stream's next event waits for it. `freeze_startup_heap` runs once the worker listens.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.cli.serve import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite collects as usual


def test_start_up_objects_leave_the_collectors_walks_and_garbage_is_not_kept(
    unfrozen: None,
) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the cyclic collector frees it

    built_at_start = [{"tier": [n]} for n in range(1000)]
    gc.collect()
    walked_before = len(gc.get_objects())
    garbage = weakref.ref(Node())  # start-up garbage, not collected yet
    assert garbage() is not None

    freeze_startup_heap()

    assert garbage() is None  # collected before the freeze, not frozen for good
    assert gc.get_freeze_count() >= 2 * len(built_at_start)
    assert len(gc.get_objects()) < walked_before - 2 * len(built_at_start)
