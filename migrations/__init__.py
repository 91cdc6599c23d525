"""Alembic migrations: the only owner of the control plane's database schema."""
