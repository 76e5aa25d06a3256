"""The HTML pages: the forms (with their CSRF token), a task's result page and a workflow's."""

from __future__ import annotations

import html
import re
import uuid
from urllib.parse import quote, unquote

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart.testing import WebsocketResponseError
from quart.typing import TestClientProtocol as Client
from quart.typing import TestWebsocketConnectionProtocol as Socket
from quart_celery.testing import ThreadWorker, messages_until_closed, wait_for_async

from quart_app.forms import MAX_NUMBERS

WORKFLOW_LINK = r'href="/workflows/([0-9a-f-]{36})"'


async def csrf_token(client: Client) -> str:
    """Load the form, as a browser would, and read its CSRF token."""
    page = await (await client.get("/")).get_data(as_text=True)
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def test_the_form_is_served_with_a_csrf_token(client: Client) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = await response.get_data(as_text=True)
    assert '<form method="post"' in page
    assert 'name="message"' in page
    assert await csrf_token(client)


async def test_posting_the_form_submits_simple_task_and_links_its_result(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    token = await csrf_token(client)
    response = await client.post("/", form={"message": "from the form", "csrf_token": token})
    assert response.status_code == 200
    page = await response.get_data(as_text=True)
    task_id = re.search(r'href="/result/([0-9a-f-]{36})"', page)
    assert task_id, page
    with thread_worker(celery):

        async def shows_result() -> str | None:
            result = await client.get(f"/result/{task_id.group(1)}")
            text = await result.get_data(as_text=True)
            return text if '<dd id="state">SUCCESS</dd>' in text else None

        page = await wait_for_async(shows_result, 20, "the result page to show SUCCESS")
    assert "&#34;from the form&#34;" in page or '"from the form"' in page


async def test_the_stream_button_submits_stream_text(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    token = await csrf_token(client)
    form = {"message": "word by word", "csrf_token": token, "stream": "1"}
    response = await client.post("/", form=form)
    assert response.status_code == 200
    found = re.search(r'href="/result/([0-9a-f-]{36})"', await response.get_data(as_text=True))
    assert found
    with thread_worker(celery):
        async with client.websocket(f"/ws/tasks/{found.group(1)}") as socket:
            received, code = await messages_until_closed(socket)
    assert code == 1000
    assert [message["chunk"] for message in received if "offset" in message] == [
        "word",
        "by",
        "word",
    ]
    assert received[-1]["result"] == "word by word"
    page = await (await client.get(f"/result/{found.group(1)}")).get_data(as_text=True)
    assert '<dd id="stream">' in page
    assert "<dd>stream_text</dd>" in page


async def test_a_post_without_a_valid_csrf_token_is_refused(
    client: Client, redis_client: redis.Redis
) -> None:
    await client.get("/")
    for form in ({"message": "forged"}, {"message": "forged", "csrf_token": "x##y"}):
        response = await client.post("/", form=form)
        assert response.status_code == 400
        assert "CSRF" in await response.get_data(as_text=True)
    assert redis_client.llen("celery") == 0


async def test_an_empty_message_is_refused_with_the_form_again(client: Client) -> None:
    token = await csrf_token(client)
    response = await client.post("/", form={"message": "", "csrf_token": token})
    assert response.status_code == 400
    assert "This field is required" in await response.get_data(as_text=True)


async def test_an_unknown_or_malformed_task_id_is_a_404_page(client: Client) -> None:
    for task_id in (str(uuid.uuid4()), "not-an-id"):
        response = await client.get(f"/result/{task_id}")
        assert response.status_code == 404
        assert response.mimetype == "text/html"
        assert "Not found" in await response.get_data(as_text=True)


async def test_the_result_page_follows_its_task_live_and_works_without_scripts(
    client: Client,
) -> None:
    token = await csrf_token(client)
    page = await (await client.post("/", form={"message": "m", "csrf_token": token})).get_data(
        as_text=True
    )
    task_id = re.search(r'href="/result/([0-9a-f-]{36})"', page)
    assert task_id
    page = await (await client.get(f"/result/{task_id.group(1)}")).get_data(as_text=True)
    assert f"/ws/tasks/{task_id.group(1)}" in page  # the live feed
    assert '<progress id="progress" max="100" value="0">' in page
    assert '<dd id="state">PENDING</dd>' in page  # what shows without scripts
    assert "<noscript>" in page


async def submit_sum_of_squares(client: Client, count: str) -> str:
    """Post the chord's form with `count`, as a browser would; the workflow's id it links."""
    token = await csrf_token(client)
    response = await client.post(
        "/workflows", form={"chord-count": count, "chord-csrf_token": token}
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    page = await response.get_data(as_text=True)
    workflow_id = re.search(WORKFLOW_LINK, page)
    assert workflow_id, page
    return workflow_id.group(1)


async def test_the_front_page_has_the_chords_form_with_its_bounds(client: Client) -> None:
    page = await (await client.get("/")).get_data(as_text=True)
    assert 'action="/workflows"' in page
    assert 'name="chord-csrf_token"' in page
    assert f'max="{MAX_NUMBERS}" min="1" name="chord-count" required type="number"' in page


async def test_posting_the_chords_form_submits_a_chord_and_links_its_page(
    client: Client, celery: Celery, thread_worker: ThreadWorker, redis_client: redis.Redis
) -> None:
    workflow_id = await submit_sum_of_squares(client, "3")
    assert redis_client.llen("celery") == 3  # the squares; the total follows them
    with thread_worker(celery):

        async def shows_the_sum() -> str | None:
            response = await client.get(f"/workflows/{workflow_id}")
            text = await response.get_data(as_text=True)
            return text if '<dd id="state">SUCCESS</dd>' in text else None

        page = await wait_for_async(shows_the_sum, 20, "the workflow page to show SUCCESS")
    assert '<span id="done">4</span> of <span id="total">4</span>' in page
    assert '<dd id="failed">0</dd>' in page
    assert '<dd id="result"><code>14</code></dd>' in page  # 1 + 4 + 9
    assert re.findall(r'<td class="state">(\w+)</td>', page) == ["SUCCESS"] * 4
    assert re.findall(r"<td>(\w+)</td>", page) == ["square"] * 3 + ["total"]


@pytest.mark.parametrize(
    ("count", "error"),
    [
        ("", "This field is required"),
        ("0", f"Number must be between 1 and {MAX_NUMBERS}"),
        (str(MAX_NUMBERS + 1), f"Number must be between 1 and {MAX_NUMBERS}"),
        ("two", "Not a valid integer value"),
    ],
)
async def test_a_count_out_of_bounds_is_refused_with_the_forms_again(
    client: Client, redis_client: redis.Redis, count: str, error: str
) -> None:
    token = await csrf_token(client)
    response = await client.post(
        "/workflows", form={"chord-count": count, "chord-csrf_token": token}
    )
    assert response.status_code == 400
    page = await response.get_data(as_text=True)
    assert error in page
    assert 'name="message"' in page  # the other form is still there
    assert redis_client.llen("celery") == 0


async def test_a_chord_posted_without_a_valid_csrf_token_is_refused(
    client: Client, redis_client: redis.Redis
) -> None:
    await client.get("/")
    for form in ({"chord-count": "3"}, {"chord-count": "3", "chord-csrf_token": "x##y"}):
        response = await client.post("/workflows", form=form)
        assert response.status_code == 400
        assert "CSRF" in await response.get_data(as_text=True)
    assert redis_client.llen("celery") == 0


async def test_an_unknown_or_malformed_workflow_id_is_a_404_page(client: Client) -> None:
    for workflow_id in (str(uuid.uuid4()), "not-an-id"):
        response = await client.get(f"/workflows/{workflow_id}")
        assert response.status_code == 404
        assert response.mimetype == "text/html"
        page = await response.get_data(as_text=True)
        assert f"No workflow <code>{workflow_id}</code> was submitted here" in page


async def test_a_task_of_a_workflow_is_not_a_workflow(client: Client) -> None:
    workflow_id = await submit_sum_of_squares(client, "2")
    page = await (await client.get(f"/workflows/{workflow_id}")).get_data(as_text=True)
    task_ids = re.findall(r'<tr data-task="([0-9a-f-]{36})">', page)
    assert len(task_ids) == 3
    assert (await client.get(f"/result/{task_ids[0]}")).status_code == 200  # linked, and there
    assert (await client.get(f"/workflows/{task_ids[0]}")).status_code == 404


@pytest.mark.settings(API_TOKEN="not-in-the-page")
async def test_the_workflow_page_follows_it_live_with_its_ticket_and_works_without_scripts(
    client: Client,
) -> None:
    workflow_id = await submit_sum_of_squares(client, "2")
    page = await (await client.get(f"/workflows/{workflow_id}")).get_data(as_text=True)
    assert '<dd id="state">PENDING</dd>' in page  # what shows without scripts
    assert '<span id="done">0</span> of <span id="total">3</span>' in page
    assert re.findall(r'<td class="state">(\w+)</td>', page) == ["PENDING"] * 3
    assert "<noscript>" in page
    assert "not-in-the-page" not in page
    # The live feed: the ticket in the page opens this workflow's socket, tokens or not.
    ticket = re.search(rf"/ws/workflows/{workflow_id}\?ticket=([^`]+)`", page)
    assert ticket, page
    socket: Socket
    query = {"ticket": unquote(html.unescape(ticket.group(1)))}
    async with client.websocket(f"/ws/workflows/{workflow_id}", query_string=query) as socket:
        snapshot = await socket.receive_json()
    assert (snapshot["id"], snapshot["state"], snapshot["total"]) == (workflow_id, "PENDING", 3)
    with pytest.raises(WebsocketResponseError) as refusal:  # the same socket, without it
        async with client.websocket(f"/ws/workflows/{workflow_id}") as socket:
            await socket.receive()
    assert refusal.value.response.status_code == 401


async def test_the_workflow_socket_ends_with_the_workflow(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    workflow_id = await submit_sum_of_squares(client, "2")
    with thread_worker(celery):
        async with client.websocket(f"/ws/workflows/{workflow_id}") as socket:
            messages, code = await messages_until_closed(socket)
    assert code == 1000
    assert messages[0]["tasks"]  # the snapshot the page was rendered from, again
    assert (messages[-1]["state"], messages[-1]["done"], messages[-1]["result"]) == (
        "SUCCESS",
        3,
        5,
    )
    # What the page's script reads off each change: the one task that changed.
    assert all({"id", "name", "state"} <= set(change["task"]) for change in messages[1:])


# Hostile input: whatever a client sends the pages, the answer is a page, never a 500.
HOSTILE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@HOSTILE
@given(
    form=st.dictionaries(
        st.sampled_from(["message", "csrf_token", "other"]) | st.text(max_size=10),
        st.text(max_size=2000),
        max_size=4,
    )
)
async def test_any_form_gets_a_page_and_never_a_500(client: Client, form: dict[str, str]) -> None:
    response = await client.post("/", form=form)
    # Without the session's CSRF token no form is valid: the page again, with the reason.
    assert response.status_code in (400, 413), response.status_code


@HOSTILE
@given(task_id=st.text(min_size=1, max_size=100))
async def test_any_id_in_a_result_pages_url_is_404(client: Client, task_id: str) -> None:
    page = await client.get(f"/result/{quote(task_id, safe='')}")
    # 308: "/result/%2F0" is "/result//0", which Werkzeug redirects to "/result/0".
    assert page.status_code in (404, 308)


@HOSTILE
@given(
    form=st.dictionaries(
        st.sampled_from(["chord-count", "chord-csrf_token", "count"]) | st.text(max_size=10),
        st.text(max_size=2000),
        max_size=4,
    )
)
async def test_any_chords_form_gets_a_page_and_never_a_500(
    client: Client, form: dict[str, str]
) -> None:
    response = await client.post("/workflows", form=form)
    assert response.status_code in (400, 413), response.status_code


@HOSTILE
@given(workflow_id=st.text(min_size=1, max_size=100))
async def test_any_id_in_a_workflow_pages_url_is_404(client: Client, workflow_id: str) -> None:
    page = await client.get(f"/workflows/{quote(workflow_id, safe='')}")
    assert page.status_code in (404, 308)
