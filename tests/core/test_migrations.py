"""The migrations create exactly the tables the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from qamqor.capabilities import import_models, migration_dirs
from qamqor.core.db import Base, head_revision, upgrade_database
from qamqor.runtime import Runtime


def test_models_and_migrations_agree(runtime: Runtime) -> None:
    import_models()
    with runtime.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head_revision(
            runtime.settings.effective_database_url, migration_dirs()
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "a model changed without a migration: run alembic revision"


def test_downgrade_to_base_and_back(runtime: Runtime) -> None:
    url = runtime.settings.effective_database_url
    runtime.engine.dispose()
    from alembic import command

    from qamqor.core.db import alembic_config

    command.downgrade(alembic_config(url, migration_dirs()), "base")
    upgrade_database(url, migration_dirs())
