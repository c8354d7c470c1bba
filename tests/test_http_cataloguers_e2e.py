"""Calvera and INTERSECT, end to end: real broker, real agent process, a real HTTP ingest endpoint."""

import json
import os
import socket
import time

import pytest

from tests.ingest_server import IngestServer

pytestmark = pytest.mark.broker

SERVICES = {"calvera": "Calvera", "intersect": "Intersect"}
PROCESSORS = ["calvera_processor.CalveraProcessor", "calvera_processor.CalveraReducedProcessor",
              "intersect_processor.IntersectProcessor", "intersect_processor.IntersectReducedProcessor"]
KINDS = ("raw", "reduced")


def keys(service):
    return ["%s_%s_%s" % (service, kind, end) for kind in KINDS for end in ("data_ready", "complete", "error")]


@pytest.fixture
def ingest():
    server = IngestServer().start()
    yield server
    server.stop()


@pytest.fixture
def start_agent(make_agent, client, ingest):
    """An agent with the four HTTP cataloguers on test-private queues; the client hears their outcomes."""
    def start(**overrides):
        overrides.setdefault("calvera_ingest_url", ingest.url)
        overrides.setdefault("intersect_ingest_url", ingest.url)
        agent = make_agent(processors=PROCESSORS, **overrides)
        prefix = agent.config["postprocess_error"].rsplit(".", 2)[0]
        for service in SERVICES:
            for key in keys(service):
                agent.config[key] = "%s.%s" % (prefix, key.upper())
        agent.write_config()
        client.subscribe(*(agent.q(key) for service in SERVICES for key in keys(service)
                           if not key.endswith("data_ready")))
        return agent.start()
    return start


def write_record(facility, msg, record):
    out_dir = facility.output_dir(msg["instrument"], msg["ipts"])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, os.path.basename(msg["data_file"]).replace(".nxs.h5", ".json"))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(record if isinstance(record, str) else json.dumps(record))
    return path


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_http_200_completes_raw_and_reduced(start_agent, facility, client, ingest, service):
    agent = start_agent()
    raw = facility.run("CNCS", "IPTS-1", 100, extra_field="kept")
    reduced = facility.run("CNCS", "IPTS-1", 101)
    record = {"input_files": [reduced["data_file"]], "output_files": ["/x/CNCS_101_red.nxs"], "user": "u"}
    write_record(facility, reduced, record)

    client.send(agent.q("%s_raw_data_ready" % service), raw)
    done = client.wait(agent.q("%s_raw_complete" % service))[0]
    assert done == dict(raw, information=socket.gethostname())
    client.send(agent.q("%s_reduced_data_ready" % service), reduced)
    done = client.wait(agent.q("%s_reduced_complete" % service))[0]
    assert done == dict(reduced, information=socket.gethostname())

    assert [p.body for p in ingest.posted] == [dict(raw, type="raw"),
                                               dict(reduced, type="reduced", reduced_data_info=record)]
    assert client.get(agent.q("%s_raw_error" % service)) == []
    assert client.get(agent.q("reduction_started")) == []  # no STARTED, as in SNS


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_other_http_status_answers_error_with_the_response_text(start_agent, facility, client, ingest, service):
    agent = start_agent()
    ingest.status, ingest.text = 500, "Bad request: no such proposal"
    raw = facility.run("CNCS", "IPTS-1", 102)
    reduced = facility.run("CNCS", "IPTS-1", 103)
    write_record(facility, reduced, {"input_files": [], "output_files": []})
    client.send(agent.q("%s_raw_data_ready" % service), raw)
    client.send(agent.q("%s_reduced_data_ready" % service), reduced)
    errors = client.wait(agent.q("%s_raw_error" % service)) + client.wait(agent.q("%s_reduced_error" % service))
    expected = "SENDING TO %s: Bad request: no such proposal" % SERVICES[service]
    assert [e["error"] for e in errors] == [expected, expected]
    assert errors[0] == dict(raw, information=socket.gethostname(), error=expected)
    assert len(ingest.posted) == 2
    assert client.get(agent.q("%s_raw_complete" % service)) == []


def test_unreachable_endpoint_answers_error_with_the_exception(start_agent, facility, client, ingest):
    agent = start_agent(intersect_ingest_url="http://127.0.0.1:%d/ingest" % closed_port())
    msg = facility.run("CNCS", "IPTS-1", 104)
    client.send(agent.q("intersect_raw_data_ready"), msg)
    error = client.wait(agent.q("intersect_raw_error"))[0]["error"]
    assert error.startswith("SENDING TO Intersect: ") and "Connection refused" in error
    assert ingest.posted == []


@pytest.mark.parametrize("record", [None, {"input_files": []}, {"output_files": []}, "[1, 2]", "{not json"])
def test_reduced_without_a_usable_record_answers_error(start_agent, facility, client, ingest, record):
    agent = start_agent()
    msg = facility.run("CNCS", "IPTS-1", 105)
    if record is not None:
        write_record(facility, msg, record)
    client.send(agent.q("calvera_reduced_data_ready"), msg)
    error = client.wait(agent.q("calvera_reduced_error"))[0]
    assert error == dict(msg, information=socket.gethostname(),
                         error="SENDING TO Calvera: Cannot read reduced data info")
    assert ingest.posted == []


def test_unusable_input_goes_to_postprocess_error(start_agent, facility, client, ingest):
    agent = start_agent()
    missing = facility.run("CNCS", "IPTS-1", 106)
    os.remove(missing["data_file"])
    no_run = facility.run("CNCS", "IPTS-1", 107)
    del no_run["run_number"]
    client.send(agent.q("intersect_reduced_data_ready"), missing)
    client.send(agent.q("calvera_raw_data_ready"), no_run)
    errors = client.wait(agent.q("postprocess_error"), count=2)
    assert sorted(e["error"] for e in errors) == sorted(["Data file not found: %s" % missing["data_file"],
                                                         "Run number is missing"])
    assert ingest.posted == []
    assert client.get(agent.q("intersect_reduced_error")) == [] and client.get(agent.q("calvera_raw_error")) == []


def test_a_stalled_endpoint_ends_at_the_job_time_limit(start_agent, facility, client, ingest):
    """The HTTP timeout is the service's; the job time limit applies as to every other job."""
    ingest.delay = 20
    agent = start_agent(ingest_timeout_sec=60, task_time_limit_minutes=0.02)
    msg = facility.run("CNCS", "IPTS-1", 108)
    client.send(agent.q("calvera_raw_data_ready"), msg)
    error = client.wait(agent.q("calvera_raw_error"), timeout=15)[0]
    assert error == dict(msg, information=socket.gethostname(),
                         error="SENDING TO Calvera: Time limit exceeded: ran longer than 0.02 minutes")
    assert len(ingest.posted) == 1


def test_a_stalled_post_can_be_cancelled(start_agent, facility, client, ingest):
    ingest.delay = 20
    agent = start_agent(ingest_timeout_sec=60)
    msg = facility.run("CNCS", "IPTS-1", 109)
    client.send(agent.q("intersect_raw_data_ready"), msg)
    deadline = time.monotonic() + 15
    while not ingest.posted:
        assert time.monotonic() < deadline, "the POST never arrived"
        time.sleep(0.05)
    client.send(agent.q("reduction_cancel"), {"cancel": True, "instrument": "CNCS", "run_number": "109",
                                              "information": "alice"})
    error = client.wait(agent.q("intersect_raw_error"), timeout=15)[0]
    assert error["error"] == "SENDING TO Intersect: cancelled" and error["cancelled_by"] == "alice"
    assert client.get(agent.q("intersect_raw_complete")) == []
