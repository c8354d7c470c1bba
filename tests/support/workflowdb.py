"""A private copy of the workflow manager's database schema in the real PostgreSQL."""

import datetime
import os
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

from tests.support.cli import service_unavailable

SCHEMA = """
CREATE TABLE report_instrument (id serial PRIMARY KEY, name varchar(20) UNIQUE NOT NULL);
CREATE TABLE report_ipts (id serial PRIMARY KEY, expt_name varchar(20) UNIQUE NOT NULL,
                          created_on timestamptz NOT NULL DEFAULT now());
CREATE TABLE report_datarun (id serial PRIMARY KEY, run_number integer NOT NULL,
                             ipts_id_id integer NOT NULL REFERENCES report_ipts(id),
                             instrument_id_id integer NOT NULL REFERENCES report_instrument(id),
                             file varchar(128) NOT NULL, created_on timestamptz NOT NULL);
CREATE TABLE report_statusqueue (id serial PRIMARY KEY, name varchar(100) UNIQUE NOT NULL,
                                 is_workflow_input boolean NOT NULL DEFAULT false);
CREATE TABLE report_runstatus (id serial PRIMARY KEY, run_id_id integer NOT NULL REFERENCES report_datarun(id),
                               queue_id_id integer NOT NULL REFERENCES report_statusqueue(id),
                               message_id varchar(100), created_on timestamptz NOT NULL);
CREATE TABLE report_error (id serial PRIMARY KEY,
                           run_status_id_id integer NOT NULL REFERENCES report_runstatus(id),
                           description varchar(200));
CREATE TABLE report_workflowsummary (id serial PRIMARY KEY,
                                     run_id_id integer UNIQUE NOT NULL REFERENCES report_datarun(id),
                                     complete boolean NOT NULL DEFAULT false,
                                     catalog_started boolean NOT NULL DEFAULT false,
                                     cataloged boolean NOT NULL DEFAULT false,
                                     reduction_needed boolean NOT NULL DEFAULT true,
                                     reduction_started boolean NOT NULL DEFAULT false,
                                     reduced boolean NOT NULL DEFAULT false,
                                     reduction_cataloged boolean NOT NULL DEFAULT false,
                                     reduction_catalog_started boolean NOT NULL DEFAULT false);
"""


def admin_dsn() -> str:
    """Where the test PostgreSQL is: $PP_TEST_PG_DSN, else the local socket, else 127.0.0.1:5432."""
    explicit = os.environ.get("PP_TEST_PG_DSN")
    if explicit:
        return explicit
    if os.path.exists("/var/run/postgresql/.s.PGSQL.5432"):
        return "host=/var/run/postgresql port=5432 dbname=postgres"
    return "host=127.0.0.1 port=5432 dbname=postgres"


class WorkflowDB:
    """A database created for one test run, with helpers to fill the workflow tables."""

    def __init__(self, dsn: str, conn: Any) -> None:
        self.dsn = dsn
        self.conn = conn
        self._ids: Dict[Tuple[str, str], int] = {}
        self._clock = datetime.datetime(2024, 5, 1, 8, 0, 0, tzinfo=datetime.timezone.utc)

    def _one(self, sql: str, params: Tuple[Any, ...]) -> int:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.fetchone()[0])

    def _id(self, table: str, column: str, value: str, extra: str = "", extra_values: Tuple[Any, ...] = ()) -> int:
        key = (table, value)
        if key not in self._ids:
            self._ids[key] = self._one("INSERT INTO %s (%s%s) VALUES (%s) RETURNING id" % (
                table, column, extra, ", ".join(["%s"] * (1 + len(extra_values)))), (value,) + extra_values)
        return self._ids[key]

    def run(self, instrument: str, ipts: str, run_number: int, file: str,
            created_on: Optional[datetime.datetime] = None, complete: Optional[bool] = None) -> int:
        inst = self._id("report_instrument", "name", instrument)
        proposal = self._id("report_ipts", "expt_name", ipts)
        run_id = self._one(
            "INSERT INTO report_datarun (run_number, ipts_id_id, instrument_id_id, file, created_on) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (run_number, proposal, inst, file, created_on or self._clock))
        if complete is not None:
            self._one("INSERT INTO report_workflowsummary (run_id_id, complete) VALUES (%s, %s) RETURNING id",
                      (run_id, complete))
        return run_id

    def status(self, run_id: int, *queues: str, error: str = "") -> None:
        """Record the run passing through ``queues`` in order; ``error`` describes an *.ERROR one."""
        for name in queues:
            self._clock += datetime.timedelta(seconds=1)
            queue = self._id("report_statusqueue", "name", name, ", is_workflow_input",
                             (name.endswith("DATA_READY"),))
            status_id = self._one(
                "INSERT INTO report_runstatus (run_id_id, queue_id_id, message_id, created_on) "
                "VALUES (%s, %s, %s, %s) RETURNING id", (run_id, queue, uuid.uuid4().hex, self._clock))
            if name.endswith(".ERROR") and error:
                self._one("INSERT INTO report_error (run_status_id_id, description) VALUES (%s, %s) RETURNING id",
                          (status_id, error))


def _with_dbname(dsn: str, name: str) -> str:
    parts: List[str] = [p for p in dsn.split() if not p.startswith("dbname=")]
    return " ".join(parts + ["dbname=%s" % name])


def create(prefix: str = "pp_test") -> Iterator[WorkflowDB]:
    """Yield a fresh database with the workflow schema; drop it afterwards."""
    try:
        import psycopg2
    except ImportError:
        service_unavailable("PostgreSQL", "psycopg2 is not installed")
        raise
    dsn = admin_dsn()
    try:
        admin = psycopg2.connect(dsn, connect_timeout=5)
    except psycopg2.Error as err:
        service_unavailable("PostgreSQL", "cannot connect with %r: %s" % (dsn, str(err).strip()))
        raise
    admin.autocommit = True
    name = "%s_%d_%s" % (prefix, os.getpid(), uuid.uuid4().hex[:8])
    with admin.cursor() as cursor:
        cursor.execute("CREATE DATABASE %s" % name)
    db_dsn = _with_dbname(dsn, name)
    conn = psycopg2.connect(db_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(SCHEMA)
        yield WorkflowDB(db_dsn, conn)
    finally:
        conn.close()
        with admin.cursor() as cursor:
            cursor.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        admin.close()
