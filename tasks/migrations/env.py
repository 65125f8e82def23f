"""Alembic's entry: the ledger's migrations, run on the connection `tasks.ledger_schema` hands
over (inside its transaction), or on `sqlalchemy.url` when Alembic's own command line runs them."""

from alembic import context
from sqlalchemy import create_engine

from tasks.ledger_schema import metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # alembic -x url=... : a developer's own command
        url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
        with create_engine(url).begin() as connection:
            _migrate(connection)
        return
    _migrate(connection)


def _migrate(connection) -> None:
    # Batch mode: SQLite alters a table by copying it, the only way it can change most of one.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():  # joins the caller's transaction when there is one
        context.run_migrations()


run()
