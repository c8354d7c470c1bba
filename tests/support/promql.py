"""The metric names the agent exports, and the ones a PromQL expression queries."""

import re
from typing import Set

from postprocessing import config as config_module
from postprocessing.agent.metrics import MetricsObserver

#: Metrics Prometheus itself makes for every scrape target.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_METRIC = re.compile(r"(?<![A-Za-z0-9_:.$\"'])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{|\[)")
_OURS = re.compile(r"\bpostprocessing_[A-Za-z0-9_]+")


def exported() -> Set[str]:
    """Every sample name the metrics module registers, with management (so the queue metrics too)."""
    cfg, _ = config_module.from_mapping({"management_url": "http://broker.invalid:8161/api/jolokia"})
    names: Set[str] = set()
    for family in MetricsObserver(cfg).registry.collect():
        if family.type == "counter":
            names.update({family.name + "_total", family.name + "_created"})
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created"))
        else:
            names.add(family.name)
    return names


def queried(expr: str) -> Set[str]:
    """The metric names in a PromQL expression: ours by prefix, and any name with a selector or range."""
    names = set(_OURS.findall(expr))
    names.update(m.group(1) for m in _METRIC.finditer(expr)
                 if m.group(1) not in ("by", "without", "on", "ignoring", "group_left", "group_right"))
    return names
