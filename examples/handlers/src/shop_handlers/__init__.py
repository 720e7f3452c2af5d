"""Example handlers for the ``{orders}:events`` pipeline (see docs/handlers.md)."""
