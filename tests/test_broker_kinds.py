"""What differs between brokers: the kind read from CONNECTED, prefetch, delays, redelivery identity."""

import pytest

from postprocessing.transport.stomp import broker_kind, delayed, prefetch_headers
from tests.test_agent_e2e import timed_script


@pytest.mark.parametrize("server, kind", [
    ("ActiveMQ/5.17.2", "activemq"),
    ("ActiveMQ-Artemis/2.40.0 ActiveMQ Artemis Messaging Engine", "artemis"),
    ("RabbitMQ/3.10.8", "rabbitmq"),
    ("", ""),
    ("SomethingElse/1.0", ""),
])
def test_kind_from_the_server_header(server, kind):
    assert broker_kind(server) == kind


def test_prefetch_one_on_each_broker():
    assert prefetch_headers("activemq", 1) == {"activemq.prefetchSize": "1"}
    assert prefetch_headers("artemis", 1) == {"consumer-window-size": "1"}
    assert prefetch_headers("rabbitmq", 1) == {"prefetch-count": "1"}
    assert prefetch_headers("artemis", 5000) == {"consumer-window-size": "-1"}


def test_a_delayed_send_on_a_broker_without_a_scheduler():
    headers = {"AMQ_SCHEDULED_DELAY": "2000", "persistent": "true"}
    assert delayed("rabbitmq", "/queue/REDUCTION.DATA_READY", headers) == "/queue/REDUCTION.DATA_READY.DELAY"
    assert headers == {"persistent": "true", "expiration": "2000", "x-dead-letter-exchange": "",
                       "x-dead-letter-routing-key": "REDUCTION.DATA_READY"}
    for kind in ("activemq", "artemis"):
        kept = {"AMQ_SCHEDULED_DELAY": "2000"}
        assert delayed(kind, "/queue/Q", kept) == "/queue/Q" and kept == {"AMQ_SCHEDULED_DELAY": "2000"}


@pytest.mark.broker
def test_auto_reads_the_kind_from_the_broker(broker, make_agent, facility, client):
    facility.script("CNCS", timed_script(0.1))
    agent = make_agent(broker_type="auto").start()
    agent.wait_log("is %s (" % broker.kind, timeout=10)
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    [done] = client.wait(agent.q("reduction_complete"))
    assert done["run_number"] == "1"
