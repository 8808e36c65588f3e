"""Persistence: the engine and sessions, the ORM models, migrations, keyset pagination."""
