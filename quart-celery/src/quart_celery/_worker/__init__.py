"""The worker side: the task base class that runs every task in the app's context, the event
loops that await `async def` tasks, cancelling a running task, and skipping a revoked one.
Imports the broker room and the base modules."""
