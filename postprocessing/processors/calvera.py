"""Calvera: send raw and reduced runs to ``calvera_ingest_url`` (see ``http_ingest``)."""

from postprocessing.processors.http_ingest import HttpIngestProcessor


class CalveraProcessor(HttpIngestProcessor):
    name = "calvera"
    service = "Calvera"
    url_key = "calvera_ingest_url"
    queue_key = "calvera_raw_data_ready"
    complete_key = "calvera_raw_complete"
    error_key = "calvera_raw_error"
    data_type = "raw"


class CalveraReducedProcessor(HttpIngestProcessor):
    name = "calvera_reduced"
    service = "Calvera"
    url_key = "calvera_ingest_url"
    queue_key = "calvera_reduced_data_ready"
    complete_key = "calvera_reduced_complete"
    error_key = "calvera_reduced_error"
    data_type = "reduced"
