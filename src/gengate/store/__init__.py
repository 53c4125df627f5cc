"""Persistence: one schema for SQLite (default, WAL) and PostgreSQL, with numbered migrations."""

from gengate.store.db import Store, open_store

__all__ = ["Store", "open_store"]
