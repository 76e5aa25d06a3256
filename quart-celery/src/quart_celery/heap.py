"""Keeping a process's long-lived heap out of the garbage collector's full passes.

A server or worker process holds a large heap of modules, classes and app objects made at
start-up (about 75,000 objects once the app is built). CPython's full (generation 2)
collection walks all of them, and took 50 to 175 ms here each time it ran under load: a pause
of every thread, so of the web server's event loop and of the async pool's. `freeze()`, once
start-up is done, moves those objects to a generation the collector never visits, so full
passes only walk what was made since. Frozen objects are still freed when their reference
count drops; only cycles among them wait for `thaw()`.

While frozen, a full pass also waits for 100 passes of the middle generation rather than
CPython's 10: a burst of long-lived objects (1,000 websockets connecting, 500 tasks starting at
once) otherwise set off a full pass again and again. Garbage in cycles among old objects is
collected less often: a little more memory, for a loop that does not stop.

Used by the web server (`quart_celery._web.garbage`, over the ASGI lifespan) and the async
pool (`quart_celery._worker.asyncio_pool`, from its start to its end).
"""

from __future__ import annotations

import gc

#: Passes of the middle generation between two full passes, while frozen (CPython's: 10).
FULL_PASS_AFTER = 100


class FrozenHeap:
    """The heap frozen by `freeze`, until `thaw`."""

    def __init__(self) -> None:
        #: CPython's thresholds, while the heap is frozen.
        self.thresholds: tuple[int, int, int] | None = None

    def freeze(self) -> None:
        """Move what start-up made out of the full passes' way; make full passes rarer."""
        if self.thresholds is not None:
            return
        gc.collect()  # what start-up left as garbage is not worth keeping forever
        gc.freeze()
        self.thresholds = gc.get_threshold()
        gc.set_threshold(self.thresholds[0], self.thresholds[1], FULL_PASS_AFTER)

    def thaw(self) -> None:
        """Undo `freeze`, if it was done."""
        if self.thresholds is not None:
            gc.set_threshold(*self.thresholds)
            self.thresholds = None
            gc.unfreeze()
