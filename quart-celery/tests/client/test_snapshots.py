"""Snapshots from the meta Celery stores: any state a task records, with its meta."""

from __future__ import annotations

from typing import Any

import pytest

from quart_celery import TaskState
from quart_celery._client.snapshots import NO_META, snapshot_from_meta

TASK_ID = "3b241101-e2bb-4255-8caf-4136c566a962"


def snapshot(meta: dict[str, Any], debug: bool = False) -> dict[str, Any]:
    return snapshot_from_meta(TASK_ID, "tests.echo", meta, debug).model_dump(mode="json")


def test_no_meta_is_pending() -> None:
    assert snapshot(NO_META) == {
        "id": TASK_ID,
        "name": "tests.echo",
        "state": "PENDING",
        "progress": None,
        "result": None,
        "error": None,
        "meta": None,
    }


@pytest.mark.parametrize(
    ("meta", "state", "result", "error"),
    [
        ({"status": "STARTED", "result": {"pid": 7, "hostname": "w@h"}}, "STARTED", None, None),
        ({"status": "SUCCESS", "result": [1, 2]}, "SUCCESS", [1, 2], None),
        (
            {"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["boom"]}},
            "FAILURE",
            None,
            {"type": "ValueError", "message": "boom"},
        ),
        ({"status": "FAILURE", "result": "not an exception"}, "FAILURE", None, None),
        ({"status": "RETRY", "result": {"exc_type": "RuntimeError"}}, "RETRY", None, None),
        ({"status": "REVOKED", "result": {"exc_type": "TaskRevokedError"}}, "REVOKED", None, None),
    ],
)
def test_celerys_own_states_carry_no_meta(
    meta: dict[str, Any], state: str, result: Any, error: dict[str, str] | None
) -> None:
    body = snapshot(meta)
    assert (body["state"], body["result"], body["meta"]) == (state, result, None)
    if error is not None:
        assert body["error"] == error
    elif state == "FAILURE":
        assert body["error"] == {"type": "Exception", "message": "not an exception"}


@pytest.mark.parametrize(
    "recorded", [{"file": "a.txt", "percent": 40}, ["a", 1], "a line", 7, None, {}]
)
@pytest.mark.parametrize("state", ["UPLOADING", "IGNORED", "REJECTED", "progress", ""])
def test_any_other_state_is_reported_as_it_is_with_what_it_recorded(
    state: str, recorded: Any
) -> None:
    body = snapshot({"status": state, "result": recorded})
    assert (body["state"], body["meta"], body["progress"]) == (state, recorded, None)
    assert (body["result"], body["error"]) == (None, None)


def test_progress_has_its_numbers_and_its_whole_meta() -> None:
    recorded = {"current": 2, "total": 5, "status": "half way"}
    body = snapshot({"status": "PROGRESS", "result": recorded})
    assert (body["progress"], body["meta"]) == ({"current": 2, "total": 5}, recorded)


def test_a_new_meta_under_the_same_state_is_a_change() -> None:
    first = snapshot_from_meta(TASK_ID, "x", {"status": "UPLOADING", "result": {"percent": 0}})
    again = snapshot_from_meta(TASK_ID, "x", {"status": "UPLOADING", "result": {"percent": 0}})
    later = snapshot_from_meta(TASK_ID, "x", {"status": "UPLOADING", "result": {"percent": 9}})
    assert first == again != later


def test_known_states_are_the_enum_and_others_strings() -> None:
    assert snapshot_from_meta(TASK_ID, "x", {"status": "PROGRESS"}).state is TaskState.PROGRESS
    assert snapshot_from_meta(TASK_ID, "x", {"status": "UPLOADING"}).state == "UPLOADING"


def test_the_traceback_only_in_debug_mode() -> None:
    meta = {"status": "FAILURE", "result": {"exc_type": "E", "exc_message": []}, "traceback": "tb"}
    assert "traceback" not in snapshot(meta)["error"]
    assert snapshot(meta, debug=True)["error"]["traceback"] == "tb"
