"""The application package: your code, and the bridge it stands on.

Yours: `extensions.py` (the placeholder Celery instance), `tasks.py`, `forms.py`,
`blueprints/` and `templates/`. The plumbing: `bridge/`, which you leave as it is.

Nothing here imports `factories` at module level and nothing here connects anywhere when
imported: controllers import tasks, tasks import the placeholder in `extensions`, and the
factories configure that placeholder at start-up.
"""
