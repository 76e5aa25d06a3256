"""Reading what `GET /metrics` says, with prometheus-client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: The messages sent to websockets, by path (`straight` or `handler`).
MESSAGES = "probe_app_websocket_messages_total"


def scrape(server: str) -> str:
    """`GET /metrics` of a running server, on a connection of its own (so any worker process
    may answer)."""
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly these labels; 0 if there is none."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def label_values(text: str, name: str, label: str) -> set[str]:
    """Every value the samples named `name` give `label`."""
    return {
        found.labels[label]
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name and label in found.labels
    }
