"""What a task id looks like: the form Celery gives ids in, which the API's routes take."""

from __future__ import annotations

import re

# In either case; nothing else that `UUID()` would read ("{...}", "urn:uuid:...", no hyphens)
# is a task id here.
ID_FORM = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def parse_task_id(value: object) -> str | None:
    """The task id `value` is, in its usual lower-case form, if it is one; else None."""
    if isinstance(value, str) and ID_FORM.fullmatch(value):
        return value.lower()
    return None
