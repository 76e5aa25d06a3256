"""The application package: extensions, tasks and controllers.

Nothing here imports `factories` at module level and nothing here connects anywhere when
imported: controllers import tasks, tasks import the placeholder in `extensions`, and the
factories configure that placeholder at start-up.
"""
