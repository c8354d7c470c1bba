"""The operations metrics: slots, drain and pause state, outcomes by destination, duplicate
deliveries, and queue depth read from a real broker's management interface."""

import pytest

from postprocessing import config as config_module
from postprocessing.agent.metrics import MetricsObserver
from postprocessing.devtools.brokerproc import free_port
from tests.support.client import Collector
from tests.test_metrics import scrape, wait_metric


def observer(**values):
    return MetricsObserver(config_module.from_mapping(dict({"max_procs": 3}, **values))[0])


def value(obs, name, **labels):
    return obs.registry.get_sample_value(name, labels)


def test_slots_outcomes_and_duplicates():
    obs = observer()
    assert value(obs, "postprocessing_slots_total") == 3 and value(obs, "postprocessing_slots_used") == 0
    obs.job_started("reduction")
    obs.job_started("oncat")
    assert value(obs, "postprocessing_slots_used") == 2
    obs.job_finished("reduction", "/queue/REDUCTION.COMPLETE", 1.0, None)
    obs.job_finished("oncat", "/queue/CATALOG.ONCAT.ERROR", 1.0, "memory limit 5 GB exceeded")
    assert value(obs, "postprocessing_slots_used") == 0
    assert value(obs, "postprocessing_outcomes_sent_total", destination="/queue/REDUCTION.COMPLETE") == 1
    assert value(obs, "postprocessing_outcomes_sent_total", destination="/queue/CATALOG.ONCAT.ERROR") == 1
    assert value(obs, "postprocessing_job_limit_kills_total", kind="oncat", limit="memory") == 1
    assert value(obs, "postprocessing_duplicate_deliveries_total", how="rejoined") == 0
    obs.duplicate_delivery("confirmed")
    assert value(obs, "postprocessing_duplicate_deliveries_total", how="confirmed") == 1


def test_drain_and_pause_state():
    obs = observer()
    assert value(obs, "postprocessing_draining") == 0
    assert value(obs, "postprocessing_paused", instrument="CNCS") is None
    obs.control_state(True, {"CNCS": 1700000000.0, "BSS": 1700000100.0})
    assert value(obs, "postprocessing_draining") == 1
    assert value(obs, "postprocessing_paused", instrument="CNCS") == 1
    assert value(obs, "postprocessing_paused_since_timestamp_seconds", instrument="BSS") == 1700000100.0
    obs.control_state(False, {"BSS": 1700000100.0})
    assert value(obs, "postprocessing_draining") == 0
    assert value(obs, "postprocessing_paused", instrument="CNCS") is None, "an unpaused instrument is left out"
    assert value(obs, "postprocessing_paused", instrument="BSS") == 1


def test_without_a_management_url_the_queue_metrics_are_left_out():
    obs = observer()
    names = {m.name for m in obs.registry.collect()}
    assert "postprocessing_slots_used" in names
    assert not any(n.startswith(("postprocessing_queue", "postprocessing_dlq")) for n in names)


@pytest.mark.broker
def test_queue_depth_metrics_of_a_real_agent(make_agent, managed_broker):
    b = managed_broker
    port = free_port()
    agent = make_agent(on=b, metrics_port=port, metrics_address="127.0.0.1", management_url=b.management_url,
                       management_poll_sec=1, max_procs=4, job_nice=19)
    dlq = agent.q("reduction_data_ready").split("/")[-1] + ".DLQ"
    agent.config["dead_letter_queue"] = dlq
    agent.write_config()
    agent.start()
    agent.wait_log("queue depth from %s" % b.management_url)
    client = Collector(b.port, b.user, b.password, vhost="/" if b.kind == "rabbitmq" else None)
    try:
        client.send("/queue/" + dlq, {"instrument": "CNCS", "run_number": 1})
        client.send("/queue/" + dlq, {"instrument": "CNCS", "run_number": 2})
        samples = wait_metric(port, ("postprocessing_dlq_messages", (("queue", dlq),)), 2, timeout=60)
    finally:
        client.close()
    data_ready = agent.q("reduction_data_ready").split("/")[-1]
    assert samples[("postprocessing_queue_stats_up", ())] == 1
    assert samples[("postprocessing_queue_messages", (("queue", data_ready),))] == 0
    assert samples[("postprocessing_queue_oldest_message_age_seconds", (("queue", data_ready),))] == 0
    assert samples[("postprocessing_slots_total", ())] == 4
    if b.kind != "rabbitmq":  # RabbitMQ tells the age of timestamped messages only
        assert samples[("postprocessing_dlq_oldest_message_age_seconds", (("queue", dlq),))] >= 0


@pytest.mark.broker
def test_without_management_url_the_agent_says_so(make_agent):
    port = free_port()
    agent = make_agent(metrics_port=port, metrics_address="127.0.0.1", job_nice=19).start()
    agent.wait_log("no management_url: queue depth is not read")
    samples = scrape(port)
    assert ("postprocessing_draining", ()) in samples and ("postprocessing_slots_used", ()) in samples
    assert not any(name.startswith(("postprocessing_queue", "postprocessing_dlq")) for name, _ in samples)
