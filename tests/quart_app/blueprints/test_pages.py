"""The HTML pages: the form (with its CSRF token) and a task's result page."""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote

import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart.typing import TestClientProtocol as Client
from quart_celery.testing import ThreadWorker, wait_for_async


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
