"""The async client API that views call (`queue`), and what it stands on: the submitter, the
reader, the result listener, followers, the thread pool, exposed tasks and their arguments.
Imports the broker and observability rooms and the base modules."""
