"""The application package: your code.

`extensions.py` (the placeholder Celery instance and the bridge), `tasks.py`, `forms.py`,
`blueprints/` and `templates/`. The bridge between Quart and Celery is the `quart_celery`
package (its own distribution, in `quart-celery/`), which you update by replacing that folder.

Nothing here imports `factories` at module level and nothing here connects anywhere when
imported: controllers import tasks, tasks import the placeholder in `extensions`, and the
factories configure that placeholder at start-up.
"""
