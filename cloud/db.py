"""Engine, sessions and Alembic migrations (``upgrade head`` on start)."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "dialect_insert", "migrate"]

MIGRATIONS = Path(__file__).with_name("migrations")


def _alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run Alembic ``upgrade`` to ``revision`` on ``engine``'s database (creates all tables on first use)."""
    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:  # batch migrations re-create tables: a DROP must not cascade into purchases/menus
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


class Database:
    """The cloud database: one engine and a session factory.

    Args:
        url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``). For SQLite the parent
            folder is created, foreign keys are enforced and WAL journaling is used.
        data_key: the 32-byte key of the encrypted columns (:mod:`dangol_cloud.crypto`); it is attached to
            the engine's dialect, where the column types find it. None: reading or writing an encrypted
            value raises :class:`~dangol_cloud.crypto.DataKeyError` naming ``DANGOL_DATA_KEY``.
    """

    def __init__(self, url: str, data_key: bytes | None = None) -> None:
        from dangol_cloud.crypto import Keyring

        self.url = url
        self.keyring = Keyring(data_key) if data_key is not None else None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        """The engine, created on first use."""
        if self._engine is None:
            url = make_url(self.url)
            kwargs: dict = {}
            if url.get_backend_name() == "sqlite":
                if url.database and url.database != ":memory:":
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            else:
                kwargs["pool_pre_ping"] = True
            self._engine = create_engine(url, **kwargs)
            self._engine.dialect.dangol_keyring = self.keyring
            if url.get_backend_name() == "sqlite":
                event.listen(self._engine, "connect", _sqlite_pragmas)
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Session factory (``expire_on_commit=False``)."""
        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        return self._sessions

    @classmethod
    def from_settings(cls, settings) -> "Database":
        """The database of ``settings`` with its data key (None if no key is configured)."""
        return cls(settings.effective_database_url, data_key=settings.resolved_data_key())

    def migrate(self) -> None:
        """Upgrade the schema to the newest migration (encrypting any clear personal values on the way).

        Raises:
            DataKeyError: the migration must encrypt existing personal data but no data key is set.
        """
        migrate(self.engine)
        if self.engine.dialect.name == "sqlite":  # fold the WAL (it may hold pre-migration pages) into the file
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def require_key(self) -> None:
        """Refuse to run without the right data key (every command that touches personal data).

        Checks that a key is configured and that it decrypts a sample of the stored personal values.

        Raises:
            DataKeyError: no data key configured (says whether the database already holds encrypted data),
                or the configured key is not the one the data was written with.
        """
        from sqlalchemy import inspect, text

        from dangol_cloud.crypto import MISSING_KEY_HELP, DataKeyError

        sample = None
        if "customers" in inspect(self.engine).get_table_names():
            with self.engine.connect() as conn:
                sample = conn.execute(text(
                    "SELECT COALESCE(external_ref, display_name, consent_by) FROM customers WHERE external_ref IS NOT "
                    "NULL OR display_name IS NOT NULL OR consent_by IS NOT NULL LIMIT 1")).scalar()
        if self.keyring is None:
            what = "this database holds encrypted personal data" if sample else "personal data is encrypted at rest"
            raise DataKeyError(f"no data key configured ({what}): {MISSING_KEY_HELP}")
        if sample is not None:
            key_id = sample.split(":")[1] if sample.count(":") >= 2 else "?"
            if key_id != self.keyring.key_id:
                raise DataKeyError(f"DANGOL_DATA_KEY (key {self.keyring.key_id}) is not the key this database was "
                                   f"encrypted with (key {key_id}); configure that key, or finish a rotate-key")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on any exception."""
        with self.sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        """Close pooled connections."""
        if self._engine is not None:
            self._engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # deleted/overwritten content is zeroed on disk, so an erased customer's ciphertext and any plaintext of a
    # pre-encryption database do not linger in free pages (https://sqlite.org/pragma.html#pragma_secure_delete)
    cur.execute("PRAGMA secure_delete=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def dialect_insert(session: Session, table):
    """``insert(table)`` of the session's database (SQLite or PostgreSQL), which has ``on_conflict_do_nothing`` and
    ``on_conflict_do_update`` (``INSERT … ON CONFLICT``): rows another transaction may store at the same moment (a
    customer two tills create, a setting two requests store) are written without a unique violation. ``table``: a
    mapped class or a ``Table``. Another dialect gets the plain ``insert`` (no ``on_conflict_*``)."""
    from sqlalchemy import insert

    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    return insert(table)
