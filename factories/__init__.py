"""Factories that build and configure the application at start-up, never at import.

`application.create_application` builds the Quart app, `celery.configure_celery` configures the
placeholder Celery instance from an app's config, and `configuration.get_config` reads the
app's own settings from defaults and the environment.
"""
