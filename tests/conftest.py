"""Fixtures: a real ActiveMQ broker started by the suite, agents, a facility tree, a client.

Without a broker the broker tests fail under ``CI`` (set by CI) and skip loudly elsewhere.
"""

import itertools
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import requests

from postprocessing.devtools import activemq, artemis, rabbitmq_local
from postprocessing.devtools.brokerproc import free_port
from tests.support import reliability
from tests.support.agentproc import AgentProcess, queue_names
from tests.support.client import Collector
from tests.support.facility import Facility

_counter = itertools.count(1)


def _broker_unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail("CI is set and a test broker cannot run: %s" % reason, pytrace=False)
    warnings.warn("SKIPPING broker tests: %s" % reason, stacklevel=2)
    pytest.skip("NO BROKER: %s (run scripts/install-deps.sh; under CI=true this fails)" % reason)


def start_broker(workdir: str, **kwargs: Any) -> activemq.LocalActiveMQ:
    if not activemq.available():
        _broker_unavailable("java or /usr/share/activemq/bin/activemq.jar is missing")
    broker = activemq.LocalActiveMQ(workdir, **kwargs)
    try:
        return broker.start()
    except RuntimeError as err:
        _broker_unavailable(str(err))
        raise


def start_artemis(workdir: str, **kwargs: Any) -> artemis.LocalArtemis:
    if not artemis.available():
        _broker_unavailable("java or an Artemis distribution under %s is missing (scripts/install-deps.sh)"
                            % artemis.ARTEMIS_ROOT)
    broker = artemis.LocalArtemis(workdir, **kwargs)
    try:
        return broker.start()
    except RuntimeError as err:
        _broker_unavailable(str(err))
        raise


def start_rabbitmq(workdir: str, **kwargs: Any) -> rabbitmq_local.LocalRabbitMQ:
    if not rabbitmq_local.available():
        _broker_unavailable("rabbitmq-server or erl is missing")
    broker = rabbitmq_local.LocalRabbitMQ(workdir, **kwargs)
    try:
        return broker.start()
    except RuntimeError as err:
        _broker_unavailable(str(err))
        raise


_STARTERS = {"activemq": start_broker, "artemis": start_artemis, "rabbitmq": start_rabbitmq}

BROKERS = [b for b in os.environ.get("PP_TEST_BROKERS", "activemq,artemis,rabbitmq").split(",") if b]
_ONLY = ("activemq_only", "artemis_only", "rabbitmq_only")


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    """A test marked ``<kind>_only`` runs against that broker kind only."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("broker") if callspec else None
        others = [m for m in _ONLY if m != "%s_only" % kind] if kind else []
        (drop if any(item.get_closest_marker(m) for m in others) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: Any) -> Iterator[Any]:
    """Each broker test runs against ActiveMQ Classic, ActiveMQ Artemis and RabbitMQ's STOMP plugin.

    Each is a private broker in a work directory of its own, removed afterwards: a run of the
    tests neither needs a broker service on the machine nor leaves queues behind in one.
    """
    workdir = tempfile.mkdtemp(prefix="pp-broker-")
    b: Any = _STARTERS[request.param](workdir)
    yield b
    b.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def private_broker(broker: Any, tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Start brokers of the session broker's kind that the test owns: it may kill and restart them."""
    started: List[Any] = []

    def start(name: str = "broker", **kwargs: Any) -> Any:
        if broker.kind == "artemis":
            # These brokers get SIGKILLed: sync the journal as production does, or what the
            # test's own clients consumed just before the kill comes back to them after it.
            kwargs.setdefault("journal_sync", True)
        b = _STARTERS[broker.kind](str(tmp_path / name), **kwargs)
        started.append(b)
        return b

    yield start
    for b in started:
        b.kill()


#: The keyword each private broker kind takes for the port of its management interface.
_MANAGEMENT = {"activemq": "jolokia_port", "artemis": "web_port", "rabbitmq": "management_port"}


@pytest.fixture
def managed_broker(broker: Any, private_broker: Callable[..., Any]) -> Any:
    """A private broker of the session's kind with its management interface on (``management_url``)."""
    b = private_broker(**{_MANAGEMENT[broker.kind]: free_port()})
    deadline = time.monotonic() + 90
    while True:
        try:
            requests.get(b.management_url, timeout=5)
            return b
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def facility(tmp_path: Any) -> Facility:
    root = tmp_path / "data"
    root.mkdir()
    return Facility(str(root))


@pytest.fixture
def client(broker: Any) -> Iterator[Collector]:
    c = collector(broker)
    yield c
    c.close()


def collector(broker: Any) -> Collector:
    """A test client of ``broker``."""
    return Collector(broker.port, broker.user, broker.password, vhost="/" if broker.kind == "rabbitmq" else None)


def base_config(broker: Any, facility: Facility, prefix: str) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {
        "brokers": [["127.0.0.1", broker.port]], "amq_user": broker.user, "amq_pwd": broker.password,
        "broker_type": broker.kind, "allow_root": True,
        "data_root": facility.root, "heartbeat_interval_sec": 1, "admission_max_load_per_cpu": 0,
        "admission_min_free_mem_perc": 0, "kill_grace_sec": 2, "reconnect_initial_sec": 0.2,
        "reconnect_max_sec": 2, "job_nice": 0, "stomp_heartbeat_ms": 2000,
    }
    cfg.update(queue_names(prefix))
    return cfg


@pytest.fixture
def make_agent(broker: Any, facility: Facility, tmp_path: Any,
               client: Collector) -> Iterator[Callable[..., AgentProcess]]:
    """Build agents (not started) on the session broker, with test-private queue names.

    The client subscribes to every outcome destination of the first agent's names.
    """
    prefix = "T%d_%d" % (os.getpid(), next(_counter))
    agents: List[AgentProcess] = []

    def make(name: str = "agent", on: Any = None, host: Optional[str] = None, **overrides: Any) -> AgentProcess:
        """``on``: another broker (from ``private_broker``) for this agent; ``host``: its host name."""
        cfg = base_config(on or broker, facility, prefix)
        cfg.update(overrides)
        agent = AgentProcess(str(tmp_path), cfg, name=name, host=host)
        if not agents:
            client.subscribe(*(agent.q(k) for k in (
                "reduction_started", "reduction_complete", "reduction_error", "reduction_disabled",
                "postprocess_error")), agent.q("heart_beat"))
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.kill()


_recorder = reliability.Recorder()


@pytest.fixture(scope="session")
def reliability_rows() -> reliability.Recorder:
    """Record a row of the README's Reliability table: ``record(test, done, observed)``."""
    return _recorder


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if _recorder.rows and exitstatus == 0:
        reliability.save(_recorder.rows)
