"""The heap start-up made is kept out of full garbage collections while the app serves."""

from __future__ import annotations

import gc

from quart import Quart


async def test_the_start_up_heap_is_frozen_while_serving_and_thawed_after(app: Quart) -> None:
    assert gc.get_freeze_count() == 0
    async with app.test_app():
        # Tens of thousands: modules, classes and the app, not just a few objects.
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
