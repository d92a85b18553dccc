"""Alembic environment: every table module under ``app.db`` is imported for autogenerate."""

from __future__ import annotations

import importlib
import pkgutil

from alembic import context
from sqlalchemy import engine_from_config, pool

import app.db
from app.db.base import Base
from app.settings import Settings

for mod in pkgutil.iter_modules(app.db.__path__):
    importlib.import_module(f"app.db.{mod.name}")

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().database_url
config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
