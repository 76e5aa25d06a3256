"""The broker and result protocol: where Redis is, Celery's settings, the transport and result
backend, task messages and their records, and the keys the bridge keeps in Redis. Imports only
the package's base modules (`settings`, `errors`, `states`, `schemas`)."""
