"""INTERSECT: send raw and reduced runs to ``intersect_ingest_url`` (see ``http_ingest``)."""

from postprocessing.processors.http_ingest import HttpIngestProcessor


class IntersectProcessor(HttpIngestProcessor):
    name = "intersect"
    service = "Intersect"
    url_key = "intersect_ingest_url"
    queue_key = "intersect_raw_data_ready"
    complete_key = "intersect_raw_complete"
    error_key = "intersect_raw_error"
    data_type = "raw"


class IntersectReducedProcessor(HttpIngestProcessor):
    name = "intersect_reduced"
    service = "Intersect"
    url_key = "intersect_ingest_url"
    queue_key = "intersect_reduced_data_ready"
    complete_key = "intersect_reduced_complete"
    error_key = "intersect_reduced_error"
    data_type = "reduced"
