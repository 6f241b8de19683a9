"""The agent's database: models, engines, migrations, ingest and queries.

This package must not import ``agent`` or ``hyperct_core``: callers pass
paths and settings in explicitly (e.g. ``storage.db.upgrade(engine, alembic_dir)``).
"""
