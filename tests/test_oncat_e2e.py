"""Cataloguing in ONCat, end to end: real broker, real agent process, a real HTTP stand-in for ONCat."""

import json
import os
import socket
import uuid

import pytest

from tests.oncat_server import ONCatServer

pytestmark = pytest.mark.broker

TOKEN = "oncat-secret-token-for-tests"
OUTCOME_KEYS = ("catalog_started", "catalog_complete", "catalog_error", "reduction_catalog_started",
                "reduction_catalog_complete", "reduction_catalog_error")
IMAGE_METADATA = "bl10:exp:im:imagefilepath"


@pytest.fixture
def oncat(facility):
    server = ONCatServer(facility.root, TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def start_agent(make_agent, oncat, client):
    """Start an agent talking to the ONCat stand-in; the client hears every catalog outcome."""
    def start(**overrides):
        overrides.setdefault("oncat_url", oncat.url)
        overrides.setdefault("oncat_api_token", TOKEN)
        agent = make_agent(**overrides)
        client.subscribe(*(agent.q(key) for key in OUTCOME_KEYS))
        return agent.start()
    return start


def touch(*parts):
    path = os.path.join(*parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"data")
    return path


def imaging(value):
    """Datafile fields giving image locations at the default metadata path."""
    return {"metadata": {"entry": {"daslogs": {IMAGE_METADATA: {"value": value}}}}}


def experiment_dir(facility, inst, ipts):
    return os.path.join(facility.root, facility.facility, inst, ipts)


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- raw data ------------------------------------------------------------------------------

def test_raw_file_is_catalogued(start_agent, facility, client, oncat):
    agent = start_agent()
    msg = facility.run("CNCS", "IPTS-1234", 100, extra_field="kept")
    client.send(agent.q("catalog_data_ready"), msg)

    complete = client.wait(agent.q("catalog_complete"))[0]
    started = client.get(agent.q("catalog_started"))
    assert len(started) == 1 and started[0]["run_number"] == "100"
    assert client.times[agent.q("catalog_started")][0] <= client.times[agent.q("catalog_complete")][0]
    for key, value in msg.items():
        assert complete[key] == value
    assert complete["information"] == socket.gethostname()
    assert "error" not in complete
    assert oncat.ingested() == [msg["data_file"]]
    assert [r.authorization for r in oncat.requests] == ["Bearer " + TOKEN]
    assert oncat.batches() == []
    log = agent.log()
    assert "[CNCS 100] ingested %s" % msg["data_file"] in log
    assert TOKEN not in log


def test_related_files_follow_the_data_file_one_by_one(start_agent, facility, client, oncat):
    agent = start_agent()
    msg = facility.run("CNCS", "IPTS-1", 100)
    images = os.path.join(experiment_dir(facility, "CNCS", "IPTS-1"), "images")
    related = [touch(images, "det_%s" % d, "CNCS_100_det_%s.nxs.h5" % d) for d in ("2", "10", "1")]
    for decoy in ("det_1/CNCS_1000_det_1.nxs.h5", "det_1/CNCS_10_det_1.nxs.h5",
                  "other/CNCS_100_det_1.nxs.h5", "det_3/SEQ_100_det_3.nxs.h5"):
        touch(images, decoy)
    client.send(agent.q("catalog_data_ready"), msg)
    client.wait(agent.q("catalog_complete"))
    assert oncat.ingested() == [msg["data_file"]] + sorted(related)
    assert oncat.batches() == []
    assert "[CNCS 100] ingested 3 related files" in agent.log()


def test_data_file_among_related_files_is_ingested_once(start_agent, facility, client, oncat):
    agent = start_agent()
    images = os.path.join(experiment_dir(facility, "CNCS", "IPTS-1"), "images")
    data_file = touch(images, "det_1", "CNCS_7_det_1.nxs.h5")
    other = touch(images, "det_2", "CNCS_7_det_2.nxs.h5")
    msg = {"facility": "SNS", "instrument": "CNCS", "ipts": "IPTS-1", "run_number": "7", "data_file": data_file}
    client.send(agent.q("catalog_data_ready"), msg)
    client.wait(agent.q("catalog_complete"))
    assert oncat.ingested() == [data_file, other]


def test_image_series_is_filtered_by_run_and_sent_in_batches(start_agent, facility, client, oncat):
    facility.script("VENUS", "raise SystemExit('the switch file must never run')\n", name="catalog_VENUS.py")
    agent = start_agent()
    msg = facility.run("VENUS", "IPTS-9", 2482)
    exp = experiment_dir(facility, "VENUS", "IPTS-9")
    series = os.path.join(exp, "images", "series")
    mine = [touch(series, "Run_2482_%05d.fits" % i) for i in range(100)]
    mine += [touch(series, "ob_Run_2482_%03d.tiff" % i) for i in range(7)]
    mine += [touch(series, "dc_Run_002482_0001.fits"), touch(series, "end_Run_2482.fits")]
    single = touch(exp, "images", "single", "Run_2482.tiff")
    decoys = [touch(series, name) for name in (
        "img_Run_24820_0001.fits", "img_Run_248_0001.fits", "xRun_2482_0001.fits", "img_Run_24821.tiff")]
    ignored = [touch(series, "img_Run_2482.txt"), touch(series, "nested.fits", "Run_2482_inner.fits")]
    oncat.extra[msg["data_file"]] = imaging([
        "images/series", "images/series/", "images/single/Run_2482.tiff", "images/missing",
        "../../../../../../etc", "/etc/passwd",
    ])
    client.send(agent.q("catalog_data_ready"), msg)
    client.wait(agent.q("catalog_complete"))

    batches = oncat.batches()
    expected = sorted(mine + [single])
    assert [len(b) for b in batches] == [50, 50, 10]
    assert [path for batch in batches for path in batch] == expected
    sent = set(expected)
    assert not sent.intersection(decoys + ignored)
    assert oncat.requests[0].target == msg["data_file"]
    log = agent.log()
    assert "110 image files of run 2482, 4 other files skipped" in log
    assert "ingested 110 image files in 3 batches" in log
    assert "is outside" in log and "images/missing does not exist" in log


def test_image_cataloguing_follows_the_switch_file_without_restart(start_agent, facility, client, oncat):
    agent = start_agent()
    msg = facility.run("VENUS", "IPTS-9", 5)
    exp = experiment_dir(facility, "VENUS", "IPTS-9")
    images = [touch(exp, "images", "run5", "Run_5_%d.tiff" % i) for i in range(3)]
    touch(exp, "images", "run5", "Run_50_0.tiff")
    oncat.extra[msg["data_file"]] = imaging("images/run5")
    complete = agent.q("catalog_complete")

    client.send(agent.q("catalog_data_ready"), msg)
    client.wait(complete, 1)
    assert oncat.batches() == []

    switch = facility.script("VENUS", "", name="catalog_VENUS.py")
    client.send(agent.q("catalog_data_ready"), msg)
    client.wait(complete, 2)
    assert oncat.batches() == [sorted(images)]

    os.rename(switch, switch + ".off")
    client.send(agent.q("catalog_data_ready"), msg)
    client.wait(complete, 3)
    assert len(oncat.batches()) == 1
    assert len(oncat.ingested()) == 3
    assert not client.get(agent.q("catalog_error"))


def test_image_metadata_paths_are_configurable(start_agent, facility, client, oncat):
    facility.script("VENUS", "", name="catalog_VENUS.py")
    agent = start_agent(image_filepath_metadata_paths=["metadata.entry.custom.first", "metadata.entry.second"])
    msg = facility.run("VENUS", "IPTS-2", 31)
    exp = experiment_dir(facility, "VENUS", "IPTS-2")
    first = touch(exp, "a", "Run_31_a.fits")
    second = touch(exp, "b", "Run_31_b.fits")
    touch(exp, "c", "Run_31_c.fits")
    oncat.extra[msg["data_file"]] = {"metadata": {"entry": {
        "custom": {"first": "a"}, "second": ["b/Run_31_b.fits"],
        "daslogs": {IMAGE_METADATA: {"value": "c"}}}}}
    client.send(agent.q("catalog_data_ready"), msg)
    client.wait(agent.q("catalog_complete"))
    assert oncat.batches() == [[first, second]]


# -- reduced data --------------------------------------------------------------------------

def test_reduction_record_is_ingested(start_agent, facility, client, oncat):
    agent = start_agent()
    msg = facility.run("CNCS", "IPTS-1", 100, extra_field="kept")
    out = facility.output_dir("CNCS", "IPTS-1")
    os.makedirs(out)
    record = os.path.join(out, "CNCS_100.json")
    with open(record, "w") as handle:
        json.dump({"input_files": [msg["data_file"]], "output_files": [os.path.join(out, "r.nxs")]}, handle)
    client.send(agent.q("reduction_catalog_data_ready"), msg)

    complete = client.wait(agent.q("reduction_catalog_complete"))[0]
    assert client.get(agent.q("reduction_catalog_started"))
    assert client.times[agent.q("reduction_catalog_started")][0] <= \
        client.times[agent.q("reduction_catalog_complete")][0]
    assert complete["extra_field"] == "kept" and complete["information"] == socket.gethostname()
    assert oncat.ingested("reductions") == [record]
    assert oncat.ingested("datafiles") == []
    assert [r.authorization for r in oncat.requests] == ["Bearer " + TOKEN]


def test_without_a_usable_record_nothing_is_ingested(start_agent, facility, client, oncat):
    agent = start_agent()
    out = facility.output_dir("CNCS", "IPTS-1")
    os.makedirs(out)
    records = {
        1: None, 2: "{not json", 3: json.dumps({"input_files": []}), 4: json.dumps([1, 2]),
        5: json.dumps({"output_files": [], "input_files": []}),
    }
    for run, text in records.items():
        if text is not None:
            with open(os.path.join(out, "CNCS_%d.json" % run), "w") as handle:
                handle.write(text)
        client.send(agent.q("reduction_catalog_data_ready"), facility.run("CNCS", "IPTS-1", run))
    completes = client.wait(agent.q("reduction_catalog_complete"), len(records))
    assert sorted(c["run_number"] for c in completes) == ["1", "2", "3", "4", "5"]
    assert oncat.ingested("reductions") == [os.path.join(out, "CNCS_5.json")]
    log = agent.log()
    assert "[CNCS 1] nothing to catalogue: no reduction record %s" % os.path.join(out, "CNCS_1.json") in log
    assert "[CNCS 2] nothing to catalogue" in log and "is not JSON" in log
    assert "[CNCS 3] nothing to catalogue" in log and "has no output_files" in log
    assert "[CNCS 4] nothing to catalogue" in log and "is not a JSON object" in log
    assert not client.get(agent.q("reduction_catalog_error"))


# -- ONCat errors --------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["", "wrong-secret-token-xyz"])
def test_refused_token_gives_catalog_errors(start_agent, facility, client, oncat, token):
    error_queue = "T%s.CATALOG.ERROR" % uuid.uuid4().hex
    agent = start_agent(oncat_api_token=token, reduction_catalog_error=error_queue)
    assert agent.q("reduction_catalog_error") == "/queue/" + error_queue
    msg = facility.run("CNCS", "IPTS-1", 100, extra_field="kept")
    os.makedirs(facility.output_dir("CNCS", "IPTS-1"))
    with open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "CNCS_100.json"), "w") as handle:
        json.dump({"input_files": [], "output_files": []}, handle)
    client.send(agent.q("catalog_data_ready"), msg)
    client.send(agent.q("reduction_catalog_data_ready"), msg)

    raw = client.wait(agent.q("catalog_error"))[0]
    reduced = client.wait(agent.q("reduction_catalog_error"))[0]
    for error in (raw, reduced):
        assert error["error"].startswith("ONCAT: ") and "403" in error["error"]
        assert error["extra_field"] == "kept" and error["information"] == socket.gethostname()
    assert client.get(agent.q("catalog_started")) and client.get(agent.q("reduction_catalog_started"))
    assert not client.get(agent.q("catalog_complete")) and not client.get(agent.q("reduction_catalog_complete"))
    assert {r.authorization for r in oncat.requests} == {("Bearer " + token) if token else None}
    if token:
        assert token not in agent.log() and token not in json.dumps(raw)


def test_unknown_files_give_catalog_errors(start_agent, facility, client, oncat):
    agent = start_agent()
    first = facility.run("CNCS", "IPTS-1", 1)
    oncat.unknown.add(first["data_file"])
    second = facility.run("CNCS", "IPTS-1", 2)
    related = touch(experiment_dir(facility, "CNCS", "IPTS-1"), "images", "det_1", "CNCS_2_det_1.nxs.h5")
    oncat.unknown.add(related)
    client.send(agent.q("catalog_data_ready"), first)
    client.send(agent.q("catalog_data_ready"), second)
    errors = {e["run_number"]: e["error"] for e in client.wait(agent.q("catalog_error"), 2)}
    assert errors["1"].startswith("ONCAT: Could not find resource")
    assert errors["2"].startswith("ONCAT: Could not find resource")
    log = agent.log()
    assert "ingest of %s failed: NotFoundError: Could not find resource" % first["data_file"] in log
    assert "ingest of %s failed: NotFoundError: Could not find resource" % related in log
    assert sorted(oncat.ingested()) == sorted([first["data_file"], second["data_file"], related])
    assert not client.get(agent.q("catalog_complete"))

    third = facility.run("CNCS", "IPTS-1", 3)
    record = os.path.join(facility.output_dir("CNCS", "IPTS-1"), "CNCS_3.json")
    touch(record)
    with open(record, "w") as handle:
        json.dump({"input_files": [], "output_files": []}, handle)
    oncat.unknown.add(record)
    client.send(agent.q("reduction_catalog_data_ready"), third)
    error = client.wait(agent.q("reduction_catalog_error"))[0]
    assert error["error"].startswith("ONCAT: Could not find resource")
    assert "ingest of %s failed" % record in agent.log()


def test_refused_ingest_reads_as_sns_words_it(start_agent, facility, client, oncat):
    """SNS answers a failed ingest with "ONCAT: <reason>"; its own tests assert "ONCAT: Bad request"."""
    agent = start_agent()
    msg = facility.run("CNCS", "IPTS-1", 5)
    oncat.refused.add(msg["data_file"])
    client.send(agent.q("catalog_data_ready"), msg)
    error = client.wait(agent.q("catalog_error"))[0]
    assert error == dict(msg, information=socket.gethostname(), error="ONCAT: Bad request")
    assert "ingest of %s failed: BadRequestError: Bad request" % msg["data_file"] in agent.log()


def test_unreachable_oncat_gives_catalog_errors(start_agent, facility, client, oncat):
    agent = start_agent(oncat_url="http://127.0.0.1:%d" % closed_port())
    msg = facility.run("CNCS", "IPTS-1", 100)
    client.send(agent.q("catalog_data_ready"), msg)
    error = client.wait(agent.q("catalog_error"))[0]
    assert error["error"].startswith("ONCAT: HTTPConnectionPool(host='127.0.0.1'")
    assert "Connection refused" in error["error"]
    assert "ingest of %s failed: ConnectionError" % msg["data_file"] in agent.log()
    assert oncat.requests == []
    assert agent.proc.poll() is None


def test_oncat_requests_time_out(start_agent, facility, client, oncat):
    oncat.delay = 30
    agent = start_agent(oncat_timeout_sec=0.5)
    client.send(agent.q("catalog_data_ready"), facility.run("CNCS", "IPTS-1", 100))
    error = client.wait(agent.q("catalog_error"), timeout=15)[0]
    assert "timed out" in error["error"]


def test_oncat_identity_of_a_datafile_is_checked_before_use(start_agent, facility, client, oncat):
    agent = start_agent()
    bad = {1: {"experiment": "../../../../tmp"}, 2: {"instrument": "A/B"}, 3: {"indexed": {"run_number": None}}}
    for run, fields in bad.items():
        msg = facility.run("CNCS", "IPTS-1", run)
        oncat.extra[msg["data_file"]] = fields
        client.send(agent.q("catalog_data_ready"), msg)
    errors = {e["run_number"]: e["error"] for e in client.wait(agent.q("catalog_error"), len(bad))}
    prefix = "ONCAT: ONCat returned a datafile without a usable identity: "
    assert errors["1"] == prefix + "datafile experiment is not a plain name: '../../../../tmp'"
    assert errors["2"] == prefix + "datafile instrument is not a plain name: 'A/B'"
    assert errors["3"] == prefix + "Run number is missing"


# -- input checks and communication-only -------------------------------------------------

def test_unusable_payloads_go_to_postprocess_error(start_agent, facility, client, oncat):
    agent = start_agent()
    good = facility.run("CNCS", "IPTS-1", 9)
    missing = os.path.join(os.path.dirname(good["data_file"]), "CNCS_404.nxs.h5")
    bodies = [
        dict(good, data_file=missing), dict(good, data_file="/etc/hostname"), dict(good, instrument="../../tmp"),
        dict(good, instrument="A/B"), dict(good, instrument=""), dict(good, instrument="CN\x00CS"),
        dict(good, ipts=".."), dict(good, facility="../SNS"), dict(good, run_number="1; rm -rf /"),
    ]
    for body in bodies:
        client.send(agent.q("catalog_data_ready"), body)
        client.send(agent.q("reduction_catalog_data_ready"), body)
    errors = client.wait(agent.q("postprocess_error"), 2 * len(bodies))
    texts = [e["error"] for e in errors]
    assert texts.count("Data file not found: %s" % missing) == 2
    assert texts.count("Data file is outside the data root: /etc/hostname") == 2
    assert all("not found" in t or "outside" in t or "is not a plain name" in t or "is not a number" in t
               for t in texts)
    assert oncat.requests == []
    assert not client.get(agent.q("catalog_started")) and not client.get(agent.q("reduction_catalog_started"))
    assert sorted(os.listdir(facility.root)) == ["SNS"]


def test_communication_only_contacts_no_catalog(start_agent, facility, client, oncat):
    agent = start_agent(communication_only=1)
    msg = facility.run("CNCS", "IPTS-1", 100)
    client.send(agent.q("catalog_data_ready"), msg)
    client.send(agent.q("reduction_catalog_data_ready"), msg)
    client.wait(agent.q("catalog_complete"))
    client.wait(agent.q("reduction_catalog_complete"))
    assert client.get(agent.q("catalog_started")) and client.get(agent.q("reduction_catalog_started"))
    assert oncat.requests == []
