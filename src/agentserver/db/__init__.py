"""Data access: SQL files, the connection pool, migrations and the embedded PostgreSQL."""
