"""SQL storage: ORM tables, repositories and the unit of work. Alembic owns the schema."""
