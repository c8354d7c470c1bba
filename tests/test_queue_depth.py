"""Queue depth and the oldest message's age, read from each broker's real management interface."""

import time

import pytest

from postprocessing import config as config_module
from postprocessing.devtools.brokerproc import free_port
from postprocessing.ops import queues
from tests.support.agentproc import queue_names
from tests.support.client import Collector

pytestmark = pytest.mark.broker


def config_for(b, prefix, **overrides):
    values = dict(queue_names(prefix), brokers=[["127.0.0.1", b.port]], amq_user=b.user, amq_pwd=b.password,
                  broker_type=b.kind, management_url=b.management_url, processors=["reduction", "oncat"],
                  dead_letter_queue="%s.DLQ" % prefix, management_timeout_sec=10)
    values.update(overrides)
    return config_module.from_mapping(values)[0]


def wait_read(reader, check, timeout=60.0):
    """Read until ``check(depths by queue)`` holds (a broker's statistics lag a little)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            depths = {d.queue: d for d in reader.read()}
        except queues.ManagementError:
            if time.monotonic() > deadline:
                raise
            depths = None
        if depths is not None and check(depths):
            return depths
        if time.monotonic() > deadline:
            raise AssertionError("queue depths never matched: %r" % (depths,))
        time.sleep(0.5)


def test_depth_and_age_of_waiting_messages(managed_broker):
    prefix = "QD%d" % free_port()
    cfg = config_for(managed_broker, prefix)
    reader = queues.reader(cfg)
    assert reader is not None and reader.kind == managed_broker.kind
    data_ready, dlq = cfg.reduction_data_ready, "%s.DLQ" % prefix
    client = Collector(managed_broker.port, managed_broker.user, managed_broker.password,
                       vhost="/" if managed_broker.kind == "rabbitmq" else None)
    try:
        # RabbitMQ knows a message's age only from its timestamp (STOMP header ``timestamp``, seconds).
        def stamp():
            return {"timestamp": str(int(time.time()))} if managed_broker.kind == "rabbitmq" else {}

        for run in range(3):
            client.send("/queue/" + data_ready, {"instrument": "CNCS", "run_number": run}, stamp())
        client.send("/queue/" + dlq, {"instrument": "CNCS", "run_number": 9}, stamp())
        time.sleep(3.5)
        client.send("/queue/" + cfg.catalog_data_ready, {"instrument": "CNCS", "run_number": 10}, stamp())
        depths = wait_read(reader, lambda d: d[data_ready].messages == 3 and d[dlq].messages == 1
                           and d[cfg.catalog_data_ready].messages == 1)
    finally:
        client.close()
    assert [d.queue for d in reader.read()] == [data_ready, cfg.catalog_data_ready, dlq]
    assert depths[dlq].dead_letters and not depths[data_ready].dead_letters
    old, young = depths[data_ready].oldest_age_sec, depths[cfg.catalog_data_ready].oldest_age_sec
    assert old is not None and young is not None
    assert 2.0 <= old < 60 and 0 <= young < old, (old, young)


def test_an_empty_or_absent_queue_reads_zero(managed_broker):
    cfg = config_for(managed_broker, "QE%d" % free_port())
    depths = queues.reader(cfg).read()
    assert [(d.messages, d.oldest_age_sec) for d in depths] == [(0, None)] * 3


def test_wrong_credentials_are_an_error_naming_the_url(managed_broker):
    cfg = config_for(managed_broker, "QW%d" % free_port(), management_user=managed_broker.user, management_pwd="wrong")
    with pytest.raises(queues.ManagementError) as err:
        queues.reader(cfg).read()
    assert managed_broker.management_url in str(err.value)


def test_without_a_management_url_nothing_is_read():
    cfg, _ = config_module.from_mapping({})
    assert queues.reader(cfg) is None


def test_input_queues_and_dlq_names():
    cfg, _ = config_module.from_mapping({"processors": ["reduction", "reduction_himem"],
                                         "reduction_data_ready": "/queue/A.B"})
    assert queues.input_queues(cfg) == ["A.B", "REDUCTION.HIMEM.DATA_READY"]
    assert queues.dead_letter_queue(cfg, "activemq") == "ActiveMQ.DLQ"
    assert queues.dead_letter_queue(cfg, "rabbitmq") is None
    assert queues.broker_kind(config_module.from_mapping(
        {"management_url": "http://b:8161/console/jolokia"})[0]) == "artemis"
