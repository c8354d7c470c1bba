"""Raw data cataloguing: ingest a run's data file, its related files and its image series.

The related files and the image series are found from the datafile ONCat returns: its
``facility``, ``instrument``, ``experiment`` and ``indexed.run_number`` fields, and the
image locations under ``image_filepath_metadata_paths`` in its metadata.  Image series
are catalogued only while ``catalog_<INST>.py`` exists in the instrument's shared
directory (its content is never run).
"""

import glob
import os
import re
from typing import Any, Iterable, List, Mapping, Optional, Set, Tuple

from postprocessing import layout
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage
from postprocessing.messages import RunRequest, plain_name
from postprocessing.messages import run_number as parse_run_number
from postprocessing.processors.base import JobContext
from postprocessing.processors.catalog import Catalog, CatalogError, CatalogProcessor, field

#: The most files sent to ONCat in one batch request.
BATCH_SIZE = 50
IMAGE_PATTERNS = ("*.fits", "*.tiff")
_RUN_TOKEN = re.compile(r"(?<![^_])Run_([0-9]+)(?![0-9])")


def belongs_to_run(name: str, run_number: str) -> bool:
    """Whether a file name carries ``Run_<n>`` for this run (at the start or after ``_``)."""
    wanted = int(run_number)
    return any(int(number) == wanted for number in _RUN_TOKEN.findall(name))


def batches(paths: List[str], size: int = BATCH_SIZE) -> List[List[str]]:
    return [paths[i:i + size] for i in range(0, len(paths), size)]


class Datafile:
    """The identity of an ingested datafile, validated before it names any path."""

    def __init__(self, content: Any) -> None:
        if not isinstance(content, dict):
            raise CatalogError("ONCat returned no datafile object")
        self.content: Mapping[str, Any] = content
        location = content.get("location")
        self.location: Optional[str] = location if isinstance(location, str) else None
        try:
            self.facility = plain_name(content, "facility", "datafile facility")
            self.instrument = plain_name(content, "instrument", "datafile instrument")
            self.experiment = plain_name(content, "experiment", "datafile experiment")
            self.run_number = parse_run_number({"run_number": field(content, "indexed.run_number")})
        except InvalidMessage as err:
            raise CatalogError("ONCat returned a datafile without a usable identity: %s" % err) from None

    def experiment_dir(self, cfg: Config) -> str:
        return os.path.join(layout.facility_dir(cfg, self.facility, self.instrument), self.experiment)


def related_files(cfg: Config, datafile: Datafile, exclude: Iterable[Optional[str]]) -> List[str]:
    """``<experiment>/images/det_*/<INST>_<run>_det_*``, without the data file itself."""
    pattern = os.path.join(glob.escape(datafile.experiment_dir(cfg)), "images", "det_*",
                           glob.escape("%s_%s_det_" % (datafile.instrument, datafile.run_number)) + "*")
    excluded = {os.path.normpath(path) for path in exclude if path}
    return sorted(path for path in glob.glob(pattern)
                  if os.path.isfile(path) and os.path.normpath(path) not in excluded)


def image_locations(cfg: Config, content: Mapping[str, Any]) -> List[str]:
    """The image locations named in the datafile's metadata, as given (relative paths)."""
    found: List[str] = []
    for metadata_path in cfg.image_filepath_metadata_paths:
        value = field(content, metadata_path)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found.extend(item for item in value if isinstance(item, str))
    return found


def image_files(cfg: Config, datafile: Datafile, ctx: JobContext) -> Tuple[List[str], int]:
    """This run's image files, sorted and de-duplicated, and how many other files were skipped."""
    base = os.path.normpath(datafile.experiment_dir(cfg))
    candidates: Set[str] = set()
    for location in image_locations(cfg, datafile.content):
        path = os.path.normpath(os.path.join(base, location))
        if "\x00" in location or not (path == base or path.startswith(base + os.sep)):
            ctx.log.warning("image location %r is outside %s; ignored", location, base)
        elif os.path.isdir(path):
            for pattern in IMAGE_PATTERNS:
                candidates.update(p for p in glob.glob(os.path.join(glob.escape(path), pattern))
                                  if os.path.isfile(p))
        elif os.path.isfile(path):
            candidates.add(path)
        else:
            ctx.log.warning("image location %s does not exist", path)
    kept = sorted(p for p in candidates if belongs_to_run(os.path.basename(p), datafile.run_number))
    return kept, len(candidates) - len(kept)


def images_enabled(cfg: Config, req: RunRequest) -> Optional[str]:
    """The switch file that turns image cataloguing on for the instrument, if it exists."""
    switch = os.path.join(layout.instrument_shared(cfg, req.facility, req.instrument),
                          "catalog_%s.py" % req.instrument)
    return switch if os.path.isfile(switch) else None


class ONCatProcessor(CatalogProcessor):
    name = "oncat"
    queue_key = "catalog_data_ready"
    started_key = "catalog_started"
    complete_key = "catalog_complete"
    error_key = "catalog_error"

    def catalog(self, ctx: JobContext, req: RunRequest, oncat: Catalog) -> None:
        cfg = self.config
        datafile = Datafile(oncat.ingest_datafile(req.data_file))
        ctx.log.info("ingested %s", req.data_file)

        related = related_files(cfg, datafile, (req.data_file, datafile.location))
        for path in related:
            oncat.ingest_datafile(path)
        ctx.log.info("ingested %d related files", len(related))

        switch = images_enabled(cfg, req)
        if switch is None:
            return
        images, skipped = image_files(cfg, datafile, ctx)
        ctx.log.info("image cataloguing enabled by %s: %d image files of run %s, %d other files skipped",
                     switch, len(images), datafile.run_number, skipped)
        for batch in batches(images):
            oncat.batch(batch)
        if images:
            ctx.log.info("ingested %d image files in %d batches", len(images), len(batches(images)))
