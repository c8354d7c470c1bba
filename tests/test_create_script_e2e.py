"""The reduction script writer, end to end: real broker, real agent process, real files."""

import os
import re
import socket
import stat
import threading
from urllib.parse import quote_plus

import pytest

pytestmark = pytest.mark.broker

TEMPLATE = "mask = '$mask'\ne_min = ${e_min}\ncost = '$$5'\nflag = $use_default\nn = $n\n"
BACKUP = re.compile(r"reduce_CNCS\.py\.[0-9]{8}T[0-9]{6}\.[0-9]{6}\.bak")


def status_topic(agent, instrument):
    return agent.q("service_status").replace("${instrument}", instrument)


@pytest.fixture
def start_agent(make_agent, client):
    """Start an agent; the client hears the status topics of the instruments named."""
    def start(instruments=("CNCS",), **overrides):
        overrides.setdefault("create_script_users", [client.user])
        agent = make_agent(**overrides)
        client.subscribe(*(status_topic(agent, inst) for inst in instruments))
        return agent.start()
    return start


def request(instrument="CNCS", use_default=False, **template_data):
    return {"instrument": instrument, "use_default": use_default, "template_data": template_data,
            "information": "Requested by alice"}


def read(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def listing(directory):
    return sorted(os.listdir(directory))


def tree(root):
    return sorted(os.path.join(d, f) for d, dirs, files in os.walk(root) for f in dirs + files)


def test_template_is_filled(start_agent, facility, client):
    facility.script("CNCS", TEMPLATE, name="reduce_CNCS.py.template")
    agent = start_agent()
    body = request(mask=quote_plus("1-8, 'x' & y/z"), e_min="-0.95", n=3)
    body["template_data"]["use_default"] = False
    client.send_vouched(agent.q("create_reduction_script"), body)

    status = client.wait(status_topic(agent, "CNCS"))[0]
    assert status["status"] == "Created CNCS reduction script"
    assert status["src_id"] == "postprocessing"
    assert status["information"] == socket.gethostname()
    assert status["instrument"] == "CNCS" and status["template_data"] == body["template_data"]
    script = os.path.join(facility.instrument_dir("CNCS"), "reduce_CNCS.py")
    assert read(script) == "mask = '1-8, 'x' & y/z'\ne_min = -0.95\ncost = '$5'\nflag = False\nn = 3\n"
    assert "[CNCS script] Created CNCS reduction script" in agent.log()


def test_values_are_data_and_never_evaluated(start_agent, facility, client, tmp_path):
    facility.script("CNCS", "a = '''$a'''\nb = '''$b'''\nc = '''$c'''\n", name="reduce_CNCS.py.template")
    agent = start_agent()
    marker = tmp_path / "evaluated"
    body = request(a="${b}", b="__import__('os').system('touch %s')" % marker, c="$(touch %s)" % marker)
    client.send_vouched(agent.q("create_reduction_script"), body)
    assert client.wait(status_topic(agent, "CNCS"))[0]["status"] == "Created CNCS reduction script"
    script = read(os.path.join(facility.instrument_dir("CNCS"), "reduce_CNCS.py"))
    assert script == "a = '''${b}'''\nb = '''%s'''\nc = '''%s'''\n" % (body["template_data"]["b"],
                                                                    body["template_data"]["c"])
    assert not marker.exists()


def test_url_encoded_values_and_the_parameter_log(start_agent, facility, client):
    facility.script("CNCS", "x = '$x'\ny = '$y'\n# postprocessing: multiline x\n", name="reduce_CNCS.py.template")
    agent = start_agent()
    topic = status_topic(agent, "CNCS")
    client.send_vouched(agent.q("create_reduction_script"), request(y=quote_plus("a+b c/d%"), x="plus+is+space"))
    client.wait(topic, 1)
    client.send_vouched(agent.q("create_reduction_script"), request(x=quote_plus("line1\nline2\r\nline3"), y="2"))
    assert [s["status"] for s in client.wait(topic, 2)] == ["Created CNCS reduction script"] * 2

    directory = facility.instrument_dir("CNCS")
    assert read(os.path.join(directory, "reduce_CNCS.py")) == ("x = 'line1\nline2\r\nline3'\ny = '2'\n"
                                                              "# postprocessing: multiline x\n")
    lines = read(os.path.join(directory, "reduction_parameters.txt")).splitlines()
    assert len(lines) == 3
    assert lines[0] == "time\tx\ty"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[0]) for row in rows)
    assert [row[1:] for row in rows] == [["plus is space", "a+b c/d%"], ["line1; line2; line3", "2"]]


def test_missing_arguments_are_named_and_nothing_is_written(start_agent, facility, client):
    facility.script("CNCS", "a = $a\nb = $b\nc = ${c}\nd = $b\n", name="reduce_CNCS.py.template")
    old = facility.script("CNCS", "old = True\n")
    directory = facility.instrument_dir("CNCS")
    before = listing(directory)
    agent = start_agent()
    client.send_vouched(agent.q("create_reduction_script"), request(a="1"))
    status = client.wait(status_topic(agent, "CNCS"))[0]
    assert status["status"] == "Error creating CNCS reduction script: missing template arguments: b, c"
    assert read(old) == "old = True\n"
    assert listing(directory) == before


def test_missing_template(start_agent, facility, client):
    old = facility.script("CNCS", "old = True\n")
    agent = start_agent()
    client.send_vouched(agent.q("create_reduction_script"), request(a="1"))
    assert client.wait(status_topic(agent, "CNCS"))[0]["status"] == "Missing CNCS reduction template"
    assert read(old) == "old = True\n"
    assert listing(facility.instrument_dir("CNCS")) == ["reduce_CNCS.py"]


def test_default_script_is_installed_over_the_current_one(start_agent, facility, client):
    facility.script("CNCS", "default = True\n", name="reduce_CNCS_default.py")
    facility.script("CNCS", "mine = True\n")
    facility.script("SEQ", "mine = True\n")
    agent = start_agent(instruments=("CNCS", "SEQ"))
    client.send_vouched(agent.q("create_reduction_script"), request(use_default=True))
    client.send_vouched(agent.q("create_reduction_script"), request("SEQ", use_default=True))

    assert client.wait(status_topic(agent, "CNCS"))[0]["status"] == "Installed default CNCS script"
    directory = facility.instrument_dir("CNCS")
    assert read(os.path.join(directory, "reduce_CNCS.py")) == "default = True\n"
    backups = [name for name in listing(directory) if BACKUP.fullmatch(name)]
    assert len(backups) == 1 and read(os.path.join(directory, backups[0])) == "mine = True\n"
    assert not os.path.exists(os.path.join(directory, "reduction_parameters.txt"))

    status = client.wait(status_topic(agent, "SEQ"))[0]["status"]
    default = os.path.join(facility.instrument_dir("SEQ"), "reduce_SEQ_default.py")
    assert status == "Error creating SEQ reduction script: no default script %s" % default
    assert read(os.path.join(facility.instrument_dir("SEQ"), "reduce_SEQ.py")) == "mine = True\n"


def test_missing_directory(start_agent, facility, client):
    agent = start_agent(instruments=("HYSPEC",))
    client.send_vouched(agent.q("create_reduction_script"), request("hyspec", a="1"))
    status = client.wait(status_topic(agent, "HYSPEC"))[0]
    directory = facility.instrument_dir("HYSPEC")
    assert status["status"] == "Error creating HYSPEC reduction script: no directory %s" % directory
    assert status["instrument"] == "hyspec"
    assert tree(facility.root) == []


def test_backups_keep_the_newest_few(start_agent, facility, client):
    facility.script("CNCS", "v = $v\n", name="reduce_CNCS.py.template")
    facility.script("CNCS", "v = 0\n")
    agent = start_agent(script_backup_count=3)
    topic = status_topic(agent, "CNCS")
    for version in range(1, 6):
        client.send_vouched(agent.q("create_reduction_script"), request(v=str(version)))
        client.wait(topic, version)
    directory = facility.instrument_dir("CNCS")
    backups = [name for name in listing(directory) if BACKUP.fullmatch(name)]
    assert [read(os.path.join(directory, name)) for name in backups] == ["v = 2\n", "v = 3\n", "v = 4\n"]
    assert read(os.path.join(directory, "reduce_CNCS.py")) == "v = 5\n"
    assert not [name for name in listing(directory) if name.endswith(".tmp")]


def test_script_is_replaced_atomically(start_agent, facility, client):
    padding = "# padding line to make the script large enough to catch a partial write\n" * 30000
    facility.script("CNCS", "v = '$v'\n" + padding, name="reduce_CNCS.py.template")
    old = facility.script("CNCS", "v = 'old'\n" + padding)
    os.chmod(old, 0o640)
    agent = start_agent()
    topic = status_topic(agent, "CNCS")
    expected = {"v = '%s'\n%s" % (v, padding) for v in ["old"] + [str(i) for i in range(8)]}
    seen, torn, stop = set(), [], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                text = read(old)
            except FileNotFoundError:
                torn.append("missing")
                continue
            if text in expected:
                seen.add(text)
            else:
                torn.append(len(text))

    watcher = threading.Thread(target=watch)
    watcher.start()
    inodes = [os.stat(old).st_ino]
    try:
        for version in range(8):
            client.send_vouched(agent.q("create_reduction_script"), request(v=str(version)))
            client.wait(topic, version + 1)
            inodes.append(os.stat(old).st_ino)
    finally:
        stop.set()
        watcher.join()
    assert torn == []
    assert len(seen) > 1
    assert read(old) == "v = '7'\n" + padding
    assert all(before != after for before, after in zip(inodes, inodes[1:]))
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o640
    assert not [n for n in listing(facility.instrument_dir("CNCS")) if n.startswith(".reduce_CNCS.py.")]


def test_bad_instrument_names_are_rejected(start_agent, facility, client):
    facility.script("CNCS", "v = $v\n", name="reduce_CNCS.py.template")
    agent = start_agent()
    before = tree(facility.root)
    good = request(v="1")
    tricks = [dict(good, instrument=name) for name in ("../../tmp", "A/B", "", "CN\x00CS", "..", "/CNCS",
                                                           "CNCS/../CNCS", ["CNCS"], None)]
    tricks.append({"template_data": {"v": "1"}})
    tricks.append(dict(good, facility="../SNS"))
    for body in tricks:
        client.send_vouched(agent.q("create_reduction_script"), body)
    errors = client.wait(agent.q("postprocess_error"), len(tricks))
    assert all(e["error"] == "Instrument is missing" or "is not a plain name" in e["error"] for e in errors)
    assert sum(e["error"] == "Instrument is missing" for e in errors) == 2
    assert all(e["information"] == socket.gethostname() for e in errors)
    assert tree(facility.root) == before
    assert not client.get(status_topic(agent, "CNCS"))
    assert agent.proc.poll() is None


def test_bad_request_fields_give_status_errors(start_agent, facility, client):
    facility.script("CNCS", "v = $v\n", name="reduce_CNCS.py.template")
    facility.script("SEQ", "v = $\n", name="reduce_SEQ.py.template")
    agent = start_agent(instruments=("CNCS", "SEQ"))
    client.send_vouched(agent.q("create_reduction_script"), dict(request(), template_data="v=1"))
    client.send_vouched(agent.q("create_reduction_script"), dict(request(v="1"), use_default="yes"))
    client.send_vouched(agent.q("create_reduction_script"), request("SEQ", v="1"))
    statuses = [s["status"] for s in client.wait(status_topic(agent, "CNCS"), 2)]
    assert sorted(statuses) == ["Error creating CNCS reduction script: template_data is not a JSON object",
                                "Error creating CNCS reduction script: use_default is not true or false: 'yes'"]
    seq = client.wait(status_topic(agent, "SEQ"))[0]["status"]
    assert seq.startswith("Error creating SEQ reduction script: bad template: Invalid placeholder")
    assert listing(facility.instrument_dir("CNCS")) == ["reduce_CNCS.py.template"]
    assert listing(facility.instrument_dir("SEQ")) == ["reduce_SEQ.py.template"]


def test_request_is_acked_once_its_status_is_sent(make_agent, facility, client):
    facility.script("CNCS", "v = $v\n", name="reduce_CNCS.py.template")
    first = make_agent(name="first", create_script_users=[client.user])
    topic = status_topic(first, "CNCS")
    client.subscribe(topic)
    first.start()
    client.send_vouched(first.q("create_reduction_script"), request(v="1"))
    client.wait(topic, 1)
    assert first.stop() == 0

    second = make_agent(name="second", create_script_users=[client.user]).start()
    client.send_vouched(second.q("create_reduction_script"), request(v="2"))
    statuses = client.wait(topic, 2)
    assert [s["template_data"]["v"] for s in statuses] == ["1", "2"]
    assert read(os.path.join(facility.instrument_dir("CNCS"), "reduce_CNCS.py")) == "v = 2\n"
