"""Hostile input through the real broker: 1,000 bad messages among valid runs, one daemon.

Every hostile body carries a marker (``H0001``...) near its start, so the one
``postprocess_error`` it must get can be matched to it: from the echoed fields (``h``)
or from the echo of an unparseable body (``raw``).
"""

import collections
import json
import os
import re
import time
from typing import Any, Callable, Counter, Dict, List, Set, Tuple

import pytest

from tests.support.agentproc import AgentProcess
from tests.support.client import Collector
from tests.support.facility import Facility

pytestmark = [pytest.mark.broker, pytest.mark.fire]

HOSTILE = 1000
VALID_EVERY = 10
LIMIT = 64 * 1024
MB = 1024 * 1024
INST = "NOOP"
MARKER = re.compile(r"H[0-9]{4}")


class Hostile:
    """The kinds of hostile body, each a function of the marker and the facility."""

    def __init__(self, facility: Facility, outside: str) -> None:
        self.facility = facility
        nexus = os.path.dirname(facility.data_file(INST, "IPTS-1", 999))
        os.symlink(os.path.join(outside, "secret.nxs.h5"), os.path.join(nexus, "link_out.nxs.h5"))
        # A link in a directory others can write is one they could have planted (safefiles.py).
        os.chmod(nexus, 0o777)
        os.mkdir(os.path.join(nexus, "a_directory.nxs.h5"))
        os.mkfifo(os.path.join(nexus, "a_fifo.nxs.h5"))
        self.nexus = nexus
        self.outside = outside
        #: (kind, make(marker, n)): n counts the messages of that kind, so each cycles its variants.
        self.kinds: List[Tuple[str, Callable[[str, int], Any]]] = [
            ("malformed JSON", lambda h, n: '{"h": "%s", "instrument": "NOOP", ' % h),
            ("invalid UTF-8", lambda h, n: b'{"h": "%s", "instrument": "NO\xff\xfeOP"}' % h.encode()),
            ("not an object", lambda h, n: json.dumps([h, {"instrument": INST}])),
            ("wrong type", self.wrong_type),
            ("missing field", self.missing_field),
            ("path trick", self.path_trick),
            ("NUL byte", self.nul_byte),
            ("nested JSON", self.nested),
            ("oversized", self.oversized),
            ("huge string", lambda h, n: json.dumps(dict(self.run(n), h=h, instrument="N" * (LIMIT - 2048)))),
            ("data file not there", lambda h, n: json.dumps(dict(self.run(n), h=h, data_file=os.path.join(
                self.nexus, "NOOP_%d.nxs.h5" % (100000 + n))))),
        ]

    def run(self, number: int) -> Dict[str, Any]:
        return {"facility": "SNS", "instrument": INST, "ipts": "IPTS-1", "run_number": str(number),
                "data_file": os.path.join(self.nexus, "NOOP_999.nxs.h5")}

    def wrong_type(self, h: str, n: int) -> str:
        field = ("instrument", "ipts", "run_number", "data_file", "facility", "reduction_arguments")[n % 6]
        values: List[Any] = [[1, 2], {"a": None}, 3.5, True, -1, "x y", 12.5, [], ""]
        value = values[(n // 6) % len(values)]
        if field == "facility" and not value:
            value = {"name": "SNS"}  # a missing or empty facility means the configured one
        return json.dumps(dict(self.run(n), h=h, **{field: value}))

    def missing_field(self, h: str, n: int) -> str:
        body = dict(self.run(n), h=h)
        del body[("instrument", "ipts", "run_number", "data_file")[n % 4]]
        return json.dumps(body)

    def nested(self, h: str, n: int) -> str:
        """Over the 64-level limit, up to far past the recursion limit, in an extra field or in one
        the agent describes in its error (nesting just below the recursion limit once crashed it)."""
        depth = (65, 100, 960 + n * 7 % 40, 5000)[n % 4]
        inner = "[" * depth + "]" * depth if n % 2 else '{"a": ' * depth + "1" + "}" * depth
        return '{"h": "%s", "%s": %s}' % (h, "instrument" if n % 4 == 2 else "x", inner)

    def oversized(self, h: str, n: int) -> str:
        """One in four is 1 MB; the others are one byte over the limit."""
        if n % 4 == 0:
            return json.dumps(dict(self.run(n), h=h, pad="A" * MB))
        head = json.dumps(dict(self.run(n), h=h, pad=""))
        return head[:-2] + "P" * (LIMIT + 1 - len(head)) + '"}'

    def path_trick(self, h: str, n: int) -> str:
        tricks = [
            "/etc/passwd", os.path.join(self.nexus, "link_out.nxs.h5"),
            os.path.join(self.facility.root, "..", "outside", "secret.nxs.h5"),
            os.path.join(self.nexus, "../../../../../outside/secret.nxs.h5"), "../../../../etc/shadow",
            "SNS/NOOP/IPTS-1/nexus/NOOP_999.nxs.h5", os.path.join(self.nexus, "a_directory.nxs.h5"),
            os.path.join(self.nexus, "a_fifo.nxs.h5"), os.path.join(self.nexus, "\ud800.nxs.h5"),
        ]
        names = [("instrument", "../NOOP"), ("ipts", "IPTS-1/../../.."), ("facility", "/etc"), ("instrument", "..")]
        if n % 3:
            return json.dumps(dict(self.run(n), h=h, data_file=tricks[n % len(tricks)]))
        field, value = names[(n // 3) % len(names)]
        return json.dumps(dict(self.run(n), h=h, **{field: value}))

    def nul_byte(self, h: str, n: int) -> Any:
        if n % 2:
            return b'{"h": "%s", "instrument": "NO\x00OP"}' % h.encode()
        return json.dumps(dict(self.run(n), h=h, data_file=os.path.join(self.nexus, "NOOP_999.nxs.h5\x00.py")))



def marker_of(error: Dict[str, Any]) -> str:
    if isinstance(error.get("h"), str):
        return str(error["h"])
    found = MARKER.search(str(error.get("raw", "")))
    return found.group(0) if found else "?"


def listing(top: str, skip: Set[str]) -> Set[str]:
    out: Set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        out.update(os.path.join(dirpath, name) for name in dirnames + filenames)
    return out


def wait_while_alive(client: Collector, agent: AgentProcess, destination: str, count: int,
                     timeout: float = 300.0) -> None:
    """Wait for ``count`` messages on ``destination``; fail at once if the daemon dies."""
    deadline = time.monotonic() + timeout
    while client.total(destination) < count:
        assert agent.proc is not None and agent.proc.poll() is None, "the daemon died after %d messages on %s:\n%s" % (
            client.total(destination), destination, agent.tail())
        assert time.monotonic() < deadline, "waited %.0f s for %d messages on %s, got %d" % (
            timeout, count, destination, client.total(destination))
        time.sleep(0.1)


def test_thousand_hostile_messages_among_valid_runs(make_agent: Callable[..., AgentProcess], facility: Facility,
                                                    client: Collector, tmp_path: Any, broker: Any,
                                                    reliability_rows: Any) -> None:
    outside = str(tmp_path / "outside")
    os.mkdir(outside)
    with open(os.path.join(outside, "secret.nxs.h5"), "wb") as handle:
        handle.write(b"not yours")
    facility.script(INST, "pass\n")
    hostile = Hostile(facility, outside)
    agent = make_agent(max_procs=4, jobs_per_instrument=0, max_body_bytes=LIMIT, log_max_bytes=1024 * MB).start()
    queue = agent.q("reduction_data_ready")
    output = facility.output_dir(INST, "IPTS-1")
    os.makedirs(output)
    runs = [facility.run(INST, "IPTS-1", n) for n in range(1, HOSTILE // VALID_EVERY + 1)]
    valid = [r["run_number"] for r in runs]
    before_root = listing(facility.root, set())
    before_tmp = listing(str(tmp_path), {facility.root})

    sent: Dict[str, str] = {}
    kinds: Counter[str] = collections.Counter()
    t0 = time.monotonic()
    for i in range(HOSTILE):
        if i % VALID_EVERY == 0:
            client.send(queue, runs[i // VALID_EVERY])
        kind, make = hostile.kinds[i % len(hostile.kinds)]
        h = "H%04d" % i
        body = make(h, kinds[kind])
        assert (len(body) > LIMIT) == (kind == "oversized"), (kind, len(body))
        client.send(queue, body)
        sent[h] = kind
        kinds[kind] += 1
    errors_q, complete_q = agent.q("postprocess_error"), agent.q("reduction_complete")
    wait_while_alive(client, agent, errors_q, HOSTILE)
    wait_while_alive(client, agent, complete_q, len(valid))
    elapsed = time.monotonic() - t0
    time.sleep(2.0)

    errors = client.get(errors_q)
    got = collections.Counter(marker_of(e) for e in errors)
    missing = sorted(set(sent) - set(got))
    duplicated = sorted(h for h, n in got.items() if n > 1)
    strays = sorted(h for h in got if h not in sent)
    assert not missing and not duplicated and not strays, (missing[:10], duplicated[:10], strays[:10])
    assert len(errors) == HOSTILE
    assert all(isinstance(e.get("error"), str) and e["error"] for e in errors)
    too_large = [e for e in errors if e["error"].startswith("Message body too large")]
    assert len(too_large) == kinds["oversized"]
    assert all(len(json.dumps(e)) < 8 * 1024 for e in too_large), "an oversized body was echoed whole"

    complete = collections.Counter(m["run_number"] for m in client.get(complete_q))
    assert sorted(complete, key=int) == valid and set(complete.values()) == {1}, "valid runs lost or repeated"
    started = collections.Counter(m["run_number"] for m in client.get(agent.q("reduction_started")))
    assert sorted(started, key=int) == valid and set(started.values()) == {1}, "a hostile message was started"
    assert not client.get(agent.q("reduction_error"))

    assert agent.proc is not None and agent.proc.poll() is None, "the daemon died:\n" + agent.tail()
    assert "Traceback" not in agent.tail(10 ** 6)
    assert os.listdir(outside) == ["secret.nxs.h5"]
    assert listing(str(tmp_path), {facility.root}) == before_tmp, "something was written outside data_root"
    new_in_root = listing(facility.root, set()) - before_root
    assert new_in_root and all(p.startswith(output + os.sep) for p in new_in_root), sorted(
        p for p in new_in_root if not p.startswith(output + os.sep))[:10]

    kind_name = getattr(broker, "kind", "activemq")
    one_mb = (kinds["oversized"] + 3) // 4
    reliability_rows.record(
        "hostile_through_broker" + ("" if kind_name == "activemq" else "_" + kind_name),
        "%d hostile messages (%d kinds: %s; %d above the %d KiB max_body_bytes, %d of them 1 MB) interleaved "
        "with %d valid no-op runs, through %s to one agent at max_procs 4" % (
            HOSTILE, len(kinds), ", ".join(sorted(kinds)), kinds["oversized"], LIMIT // 1024, one_mb,
            len(valid), {"activemq": "ActiveMQ", "rabbitmq": "RabbitMQ"}.get(kind_name, kind_name)),
        "%d of %d hostile messages got exactly 1 postprocess_error (0 missing, 0 duplicates, %d rejected as too "
        "large); %d of %d valid runs completed exactly once, 0 STARTED for hostile input; daemon alive, "
        "0 tracebacks, 0 files written outside data_root; %.1f s for all %d messages" % (
            len(got), HOSTILE, len(too_large), len(complete), len(valid), elapsed, HOSTILE + len(valid)))
