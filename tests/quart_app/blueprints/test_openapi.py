"""The OpenAPI document and its interactive page, from the same declarations as validation."""

from __future__ import annotations

from quart.typing import TestClientProtocol as Client


async def test_the_openapi_document_describes_the_api(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    assert set(document["paths"]) == {
        "/api/tasks",
        "/api/tasks/{task_id}",
        "/healthz",
        "/readyz",
    }
    submit = document["paths"]["/api/tasks"]["post"]
    assert {"202", "400", "413", "422", "503"} <= set(submit["responses"])
    revoke = document["paths"]["/api/tasks/{task_id}"]["delete"]
    assert {"202", "404", "409", "503"} <= set(revoke["responses"])
    assert {"200", "503"} <= set(document["paths"]["/readyz"]["get"]["responses"])
    schemas = document["components"]["schemas"]
    assert schemas["ProgressTaskKwargs"]["properties"]["steps"]["maximum"] == 1000


async def test_the_docs_page_is_served(client: Client) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "openapi.json" in await response.get_data(as_text=True)
