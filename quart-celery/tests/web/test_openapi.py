"""The OpenAPI document and its interactive page, from the same declarations as validation."""

from __future__ import annotations

from typing import Any

from quart.typing import TestClientProtocol as Client

from quart_celery import TaskState


async def document(client: Client) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = await response.get_json()
    return body


async def test_the_openapi_document_describes_the_api(client: Client) -> None:
    paths = (await document(client))["paths"]
    # The bridge's own, whatever routes the app adds beside them (the probe app adds two).
    bridge = {"/api/tasks", "/api/tasks/{task_id}", "/healthz", "/readyz", "/metrics"}
    assert bridge <= set(paths)
    assert not {path for path in paths if path.startswith("/docs") or path == "/openapi.json"}
    submit = paths["/api/tasks"]["post"]
    assert {"202", "400", "413", "422", "503"} <= set(submit["responses"])
    revoke = paths["/api/tasks/{task_id}"]["delete"]
    assert {"202", "404", "409", "503"} <= set(revoke["responses"])
    assert {"200", "503"} <= set(paths["/readyz"]["get"]["responses"])


async def test_the_request_body_is_required_and_one_variant_per_exposed_task(
    client: Client,
) -> None:
    doc = await document(client)
    body = doc["paths"]["/api/tasks"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    mapping = schema["discriminator"]["mapping"]
    assert mapping["tests.count"] == "#/components/schemas/TestsCountRequest"
    kwargs = doc["components"]["schemas"]["TestsCountKwargs"]
    assert kwargs["properties"]["steps"]["maximum"] == 1000
    assert kwargs["properties"]["delay"]["default"] == 0.0
    assert kwargs["required"] == ["steps"]
    assert kwargs["additionalProperties"] is False


async def test_a_rule_across_arguments_is_stated_where_clients_read_it(client: Client) -> None:
    schemas = (await document(client))["components"]["schemas"]
    rule = schemas["TestsCountKwargs"]["description"]
    assert rule == "`steps * delay` may be at most 60 seconds."


async def test_the_known_states_are_listed_and_others_allowed(client: Client) -> None:
    doc = await document(client)
    snapshot = doc["paths"]["/api/tasks/{task_id}"]["get"]["responses"]["200"]
    state = snapshot["content"]["application/json"]["schema"]["properties"]["state"]
    assert {"type": "string"} in state["anyOf"]
    assert doc["components"]["schemas"]["TaskState"]["enum"] == list(TaskState)
    assert "any other state the task records itself" in state["description"]


async def test_the_docs_page_is_served(client: Client) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "openapi.json" in await response.get_data(as_text=True)


async def test_the_docs_page_takes_swagger_ui_from_the_app_itself(client: Client) -> None:
    page = await (await client.get("/docs")).get_data(as_text=True)
    assert "cdn" not in page.lower()
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")):
        assert f'"docs/assets/{asset}"' in page
        response = await client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200
        assert kind in response.headers["Content-Type"]
    for outside in ("../__init__.py", "%2e%2e/__init__.py", "nothing.js"):
        assert (await client.get(f"/docs/assets/{outside}")).status_code == 404
