"""The Prometheus endpoint of a real running agent, scraped over HTTP."""

import math
import time
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from postprocessing.devtools.brokerproc import free_port

pytestmark = pytest.mark.broker

OK_SCRIPT = "print('reduced')\n"
SLOW_SCRIPT = "import time\ntime.sleep(60)\n"


def scrape(port):
    """Samples by (name, sorted labels) from http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def wait_metric(port, key, value, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if samples.get(key) == value:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError("%s is %r, not %r" % (key, samples.get(key), value))
        time.sleep(0.1)


def test_metrics_of_real_jobs(make_agent, facility, client):
    port = free_port()
    agent = make_agent(metrics_port=port, metrics_address="127.0.0.1", task_time_limit_minutes=0.03).start()
    agent.wait_log("metrics at http://127.0.0.1:%d/metrics" % port)
    samples = scrape(port)
    assert samples[("postprocessing_jobs_running", (("kind", "reduction"),))] == 0
    assert samples[("postprocessing_broker_reconnects_total", ())] == 0

    facility.script("CNCS", OK_SCRIPT)
    facility.script("BSS", "raise SystemExit('bad input')\n")
    facility.script("HYS", SLOW_SCRIPT)
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.send(agent.q("reduction_data_ready"), facility.run("BSS", "IPTS-1", 2))
    client.send(agent.q("reduction_data_ready"), facility.run("HYS", "IPTS-1", 3))
    client.wait(agent.q("reduction_started"), 3)
    client.wait(agent.q("reduction_complete"))
    client.send(agent.q("reduction_data_ready"), {"instrument": "CNCS"})
    client.wait(agent.q("postprocess_error"))
    client.wait(agent.q("reduction_error"), 2, timeout=60)

    samples = wait_metric(port, ("postprocessing_jobs_running", (("kind", "reduction"),)), 0)
    outcome = "postprocessing_job_outcomes_total"
    assert samples[(outcome, (("kind", "reduction"), ("result", "complete")))] == 1
    assert samples[(outcome, (("kind", "reduction"), ("result", "error")))] == 2
    assert samples[("postprocessing_job_limit_kills_total", (("kind", "reduction"), ("limit", "time")))] == 1
    assert samples[("postprocessing_job_duration_seconds_count", (("kind", "reduction"),))] == 3
    total = samples[("postprocessing_job_duration_seconds_sum", (("kind", "reduction"),))]
    assert total >= 1.8, "the killed job ran for about two seconds"
    bucket = "postprocessing_job_duration_seconds_bucket"
    assert samples[(bucket, (("kind", "reduction"), ("le", "1.0")))] <= 2
    assert samples[(bucket, (("kind", "reduction"), ("le", "60.0")))] == 3
    assert samples[("postprocessing_messages_rejected_total", (("destination", agent.q("reduction_data_ready")),))] == 1
    age = samples[("postprocessing_heartbeat_age_seconds", ())]
    assert not math.isnan(age) and 0 <= age < 5


def test_running_jobs_gauge(make_agent, facility, client):
    port = free_port()
    agent = make_agent(metrics_port=port, metrics_address="127.0.0.1").start()
    facility.script("CNCS", SLOW_SCRIPT)
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 4))
    client.wait(agent.q("reduction_started"))
    wait_metric(port, ("postprocessing_jobs_running", (("kind", "reduction"),)), 1)


def test_reconnects_are_counted(make_agent, private_broker):
    """With a private broker that the test restarts."""
    private = private_broker()
    try:
        port = free_port()
        agent = make_agent(on=private, metrics_port=port, metrics_address="127.0.0.1").start()
        assert scrape(port)[("postprocessing_broker_reconnects_total", ())] == 0
        private.stop()
        private.start()
        agent.wait_log("connected to broker", count=2, timeout=60)
        wait_metric(port, ("postprocessing_broker_reconnects_total", ()), 1)
    finally:
        private.stop()


def listening_ports(pid):
    """The TCP ports the process ``pid`` listens on."""
    return sorted(c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN)


def test_metrics_are_off_by_default(make_agent):
    agent = make_agent().start()
    assert "metrics at" not in agent.log()
    assert listening_ports(agent.pid) == [], "the agent listens on no port without metrics_port"


def test_listening_ports_sees_the_metrics_endpoint(make_agent):
    """The check above can fail: with metrics_port set, the same probe finds the endpoint."""
    port = free_port()
    agent = make_agent(metrics_port=port, metrics_address="127.0.0.1").start()
    agent.wait_log("metrics at http://127.0.0.1:%d/metrics" % port)
    assert listening_ports(agent.pid) == [port]
