"""Keep what start-up made out of the garbage collector's full passes while the app serves.

A server process holds a large, long-lived heap of modules, classes and app objects (about
75,000 objects once the app is built). CPython's full (generation 2) collection walks all of
them, and took 50 to 70 ms here each time it ran under load: a pause of the event loop that every
socket waiting for a push shares. `gc.freeze()` once serving has started moves those objects to
a generation the collector never visits, so full passes only walk what was made since; the p99
of websocket delivery fell from about 35 ms to about 10 ms (`bench/latency.py`). Frozen objects
are still freed when their reference count drops; only cycles among them wait for
`gc.unfreeze()`, which runs when serving stops.

While it serves, a full pass also waits for 100 passes of the middle generation rather than
CPython's 10. A burst of long-lived objects (1,000 websockets connecting) otherwise set off a
full pass again and again, each 40 to 175 ms, each walking everything (CPython starts one
whenever the objects waiting since the last exceed a quarter of those that survived it; this
keeps that rule). Garbage in cycles among old objects is collected less often: a little more
memory, for a loop that does not stop.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncGenerator

from quart import Quart

#: Passes of the middle generation between two full passes, while serving (CPython's: 10).
FULL_PASS_AFTER = 100


def init_app(app: Quart) -> None:
    """Freeze the heap once everything that opens with serving is open; thaw it after.

    Register it after the other extensions: serving starts them in the order they were
    registered, so what they open is frozen too.
    """

    @app.while_serving
    async def frozen_start_up_heap() -> AsyncGenerator[None, None]:
        gc.collect()  # what start-up left as garbage is not worth keeping forever
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], FULL_PASS_AFTER)
        yield
        gc.set_threshold(*thresholds)
        gc.unfreeze()
