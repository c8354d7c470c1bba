"""Reduced data cataloguing: ingest the reduction record a reduction left beside its output.

The record is ``<output_dir>/<data file name with .nxs.h5 replaced by .json>``, a JSON
object with ``input_files`` and ``output_files``.  Without such a record nothing is
ingested and the run still completes; the log says why.
"""

import json
import os
from typing import Any, Dict, Optional, Tuple

from postprocessing import layout
from postprocessing.messages import RunRequest
from postprocessing.processors.base import JobContext
from postprocessing.processors.catalog import Catalog, CatalogProcessor

_RAW_SUFFIX = ".nxs.h5"


def record_name(data_file: str) -> str:
    """``CNCS_1.nxs.h5`` -> ``CNCS_1.json`` (other names lose their last extension)."""
    base = os.path.basename(data_file)
    stem = base[:-len(_RAW_SUFFIX)] if base.endswith(_RAW_SUFFIX) else os.path.splitext(base)[0]
    return stem + ".json"


def load_record(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The reduction record at ``path``, or None and why it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None, "no reduction record %s" % path
    except OSError as err:
        return None, "cannot read reduction record %s: %s" % (path, err.strerror or err)
    except (ValueError, RecursionError) as err:
        return None, "reduction record %s is not JSON: %s" % (path, err)
    if not isinstance(record, dict):
        return None, "reduction record %s is not a JSON object" % path
    missing = [key for key in ("input_files", "output_files") if key not in record]
    if missing:
        return None, "reduction record %s has no %s" % (path, " or ".join(missing))
    return record, None


def record_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a reduction record to ingest, or None if it is one."""
    return load_record(path)[1]


class ONCatReducedProcessor(CatalogProcessor):
    name = "oncat_reduced"
    queue_key = "reduction_catalog_data_ready"
    started_key = "reduction_catalog_started"
    complete_key = "reduction_catalog_complete"
    error_key = "reduction_catalog_error"

    def catalog(self, ctx: JobContext, req: RunRequest, oncat: Catalog) -> None:
        out_dir = layout.output_dir(self.config, req.facility, req.instrument, req.ipts)
        record = os.path.join(out_dir, record_name(req.data_file))
        problem = record_problem(record)
        if problem is not None:
            ctx.log.info("nothing to catalogue: %s", problem)
            return
        oncat.ingest_reduction(record)
        ctx.log.info("ingested reduction record %s", record)
