"""The workflow manager's database (PostgreSQL, read only): the runs to resubmit.

:func:`query` builds the SQL over the WebMon tables (``report_datarun``, ``report_runstatus``,
``report_statusqueue``, ``report_error``, ``report_workflowsummary``); :func:`database_runs` runs it.
"""

import dataclasses
import datetime
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from postprocessing import layout, messages
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage, PostProcessingError, UsageError
from postprocessing.ops.runs import Candidate

logger = logging.getLogger(__name__)

#: Statuses of a workflow step whose queue names do not start with the step: the SNS
#: agent answers a failed reduced catalogue on CATALOG.ERROR.
STEP_ALSO = {"REDUCTION_CATALOG": ("CATALOG.ERROR",)}


@dataclasses.dataclass(frozen=True)
class RunFilter:
    """Which runs: ``status`` error (the step's latest status is an *.ERROR queue), incomplete
    (the workflow summary says not complete) or any; optional instrument, IPTS and creation time."""

    status: str = "error"
    instrument: Optional[str] = None
    ipts: Optional[str] = None
    since: Optional[datetime.datetime] = None
    until: Optional[datetime.datetime] = None


def step_of(queue: str) -> str:
    """The workflow step a DATA_READY queue starts: REDUCTION_CATALOG.DATA_READY -> REDUCTION_CATALOG."""
    if not queue.endswith(".DATA_READY"):
        raise UsageError("--status error needs a *.DATA_READY queue to know the workflow step, not %s" % queue)
    return queue[:-len(".DATA_READY")]


def query(runs: RunFilter, queue: str) -> Tuple[str, Dict[str, Any]]:
    """The SQL that selects the runs, and its parameters."""
    status = runs.status
    params: Dict[str, Any] = {}
    joins = ""
    where = []
    columns = "''"
    if status == "error":
        step = step_of(queue)
        prefix = step + "."
        params["prefix"] = prefix
        params["prefix_len"] = len(prefix)
        params["also"] = list(STEP_ALSO.get(step, ())) or [""]
        joins = """
        JOIN (SELECT DISTINCT ON (s.run_id_id) s.run_id_id, s.id, q.name
              FROM report_runstatus s JOIN report_statusqueue q ON q.id = s.queue_id_id
              WHERE substr(q.name, 1, %(prefix_len)s) = %(prefix)s OR q.name = ANY(%(also)s)
              ORDER BY s.run_id_id, s.created_on DESC, s.id DESC) latest ON latest.run_id_id = r.id"""
        where.append("right(latest.name, 6) = '.ERROR'")
        columns = """COALESCE((SELECT e.description FROM report_error e
                               WHERE e.run_status_id_id = latest.id ORDER BY e.id DESC LIMIT 1), latest.name)"""
    elif status == "incomplete":
        joins = " JOIN report_workflowsummary w ON w.run_id_id = r.id"
        where.append("w.complete = false")
    if runs.instrument:
        params["instrument"] = runs.instrument
        where.append("upper(i.name) = upper(%(instrument)s)")
    if runs.ipts:
        params["ipts"] = runs.ipts
        where.append("upper(p.expt_name) = upper(%(ipts)s)")
    if runs.since is not None:
        params["since"] = runs.since
        where.append("r.created_on >= %(since)s")
    if runs.until is not None:
        params["until"] = runs.until
        where.append("r.created_on < %(until)s")
    sql = """SELECT i.name, p.expt_name, r.run_number, r.file, %s
             FROM report_datarun r
             JOIN report_instrument i ON i.id = r.instrument_id_id
             JOIN report_ipts p ON p.id = r.ipts_id_id%s
             %s
             ORDER BY i.name, r.run_number, r.id""" % (
        columns, joins, ("WHERE " + " AND ".join(where)) if where else "")
    return sql, params


def database_runs(cfg: Config, dsn: str, runs: RunFilter, facility: str, queue: str) -> List[Candidate]:
    """The runs the filter selects, with their data files (from the database, else the layout)."""
    try:
        import psycopg2
    except ImportError:
        raise UsageError("--from-db needs psycopg2, a dependency of postprocessing that is missing here: "
                         "reinstall the package (pip install postprocessing, or the RPM)") from None
    sql, params = query(runs, queue)
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as err:
        raise PostProcessingError("cannot connect to the workflow database: %s" % _first_line(err)) from None
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    except psycopg2.Error as err:
        raise PostProcessingError("workflow database query failed: %s" % _first_line(err)) from None
    finally:
        conn.close()
    out = []
    for name, expt, run_number, path, note in rows:
        try:
            instrument = plain(str(name), "Instrument")
            ipts = plain(str(expt), "IPTS")
        except UsageError as err:
            logger.warning("skipping run %s from the database: %s", run_number, err)
            continue
        run = str(int(run_number))
        tried = [path] if path else []
        found = path if path and os.path.isfile(path) else None
        if found is None:
            tried += layout.run_data_files(cfg, facility, instrument, ipts, run)
            found = layout.find_run_data_file(cfg, facility, instrument, ipts, run)
        out.append(Candidate(facility, instrument, ipts, run, found, tuple(tried), str(note or "")))
    return out


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def plain(value: str, label: str) -> str:
    try:
        return messages.plain_name({"value": value}, "value", label)
    except InvalidMessage as err:
        raise UsageError(str(err)) from None
