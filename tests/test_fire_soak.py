"""Soak: no-op runs at max_procs 4; nothing lost or repeated, memory and open files flat.

``SOAK_RUNS`` sets the size (default 300, so ``make test`` stays short); ``make soak``
runs ``bench/soak.py`` at the full 2,000.
"""

import os
from typing import Any, Callable

import pytest

from tests.support.agentproc import AgentProcess
from tests.support.client import Collector
from tests.support.facility import Facility
from tests.support.soak import soak

pytestmark = [pytest.mark.broker, pytest.mark.fire]

SOAK_RUNS = int(os.environ.get("SOAK_RUNS", "300"))
MAX_RSS_GROWTH_MB = 10.0


def test_soak_loses_nothing_and_does_not_grow(make_agent: Callable[..., AgentProcess], facility: Facility,
                                              client: Collector, broker: Any, reliability_rows: Any) -> None:
    agent = make_agent(max_procs=4, jobs_per_instrument=0).start()
    figures = soak(client, agent, facility, SOAK_RUNS)
    print("soak:", figures.summary())
    assert figures.lost == 0
    assert figures.duplicate_complete == 0
    assert figures.errors == 0
    assert figures.rss_growth_mb < MAX_RSS_GROWTH_MB, figures.summary()
    assert figures.fds_end <= figures.fds_start, figures.summary()

    kind = getattr(broker, "kind", "activemq")
    reliability_rows.record(
        "soak" + ("" if kind == "activemq" else "_" + kind),
        "%d no-op runs at max_procs 4 through %s, after %d warm-up runs (SOAK_RUNS; `make soak` runs 2,000)" % (
            figures.runs, {"activemq": "ActiveMQ", "rabbitmq": "RabbitMQ"}.get(kind, kind), figures.warmup),
        "%d lost, %d duplicate COMPLETEs, %d errors; daemon RSS %.1f -> %.1f MB (%+.1f MB, limit +%.0f); "
        "open fds %d -> %d; %.1f runs/s" % (
            figures.lost, figures.duplicate_complete, figures.errors, figures.rss_start_mb, figures.rss_end_mb,
            figures.rss_growth_mb, MAX_RSS_GROWTH_MB, figures.fds_start, figures.fds_end, figures.runs_per_s))
