"""Hostile input, fuzzed: the real agent loop and processors on the in-memory transport.

Every example builds a fresh :class:`Agent` with the processors the config names
(``postprocessing.processors.build``) over a data root in a temporary directory, puts one
message on one input queue and steps the loop (``run_once``) until the message is acked.
Whatever the body (random bytes, invalid UTF-8, deep nesting, huge strings, wrong types
in every field, path tricks, NUL bytes, 10 MB), the message is settled exactly once, gets
exactly one final outcome of which at most one is an error, nothing raises out of the
loop, and nothing is written outside the data root.
"""

import concurrent.futures
import itertools
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postprocessing.agent.agent import Agent
from postprocessing.config import Config
from postprocessing.messages import MAX_DEPTH, RAW_ECHO_LIMIT
from postprocessing.processors import build
from postprocessing.transport import Sink
from postprocessing.transport.memory import MemoryTransport
from tests.support.facility import Facility

pytestmark = pytest.mark.fire

T = TypeVar("T")
ROOT_TOKEN = "@ROOT@"
INST = "NOOP"
IPTS = "IPTS-1"
MB = 1024 * 1024
FIELDS = ("facility", "instrument", "ipts", "run_number", "data_file", "reduction_arguments", "attempt",
          "retry_in", "information", "error", "cancel", "use_default", "template_data")
ERROR_KEYS = ("postprocess_error", "reduction_error", "catalog_error", "reduction_catalog_error")
STARTED_KEYS = ("reduction_started", "catalog_started", "reduction_catalog_started")
RUN_QUEUES = ("reduction_data_ready", "reduction_himem_data_ready", "catalog_data_ready",
              "reduction_catalog_data_ready", "create_reduction_script", "reduction_cancel")
FUZZ_SETTINGS = settings(max_examples=250, deadline=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.large_base_example])


# -- the data root: a run file, a no-op script, and links that lead outside --------------
class Tree:
    def __init__(self, base: str) -> None:
        self.root = os.path.join(base, "data")
        self.outside = os.path.join(base, "outside")
        os.makedirs(self.root)
        os.makedirs(self.outside)
        with open(os.path.join(self.outside, "secret.nxs.h5"), "wb") as handle:
            handle.write(b"not yours")
        self.facility = Facility(self.root)
        self.facility.script(INST, "pass\n")
        self.data_file = self.facility.data_file(INST, IPTS, 1)
        nexus = os.path.dirname(self.data_file)
        os.symlink(os.path.join(self.outside, "secret.nxs.h5"), os.path.join(nexus, "link_out.nxs.h5"))
        os.symlink(self.outside, os.path.join(nexus, "link_dir"))
        os.symlink("/etc/passwd", os.path.join(nexus, "link_passwd.nxs.h5"))
        # Links in a directory others can write: ones they could have planted (safefiles.py).
        os.chmod(nexus, 0o777)
        os.mkdir(os.path.join(nexus, "a_directory.nxs.h5"))
        os.mkfifo(os.path.join(nexus, "a_fifo.nxs.h5"))

    def outside_listing(self) -> List[str]:
        return sorted(os.listdir(self.outside))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: Any) -> Tree:
    return Tree(str(tmp_path_factory.mktemp("fuzz")))


@pytest.fixture(autouse=True)
def quiet_agent_logs() -> Iterator[None]:
    """Hundreds of examples with megabyte fields would fill pytest's log capture."""
    log = logging.getLogger("postprocessing")
    level = log.level
    log.setLevel(logging.CRITICAL)
    yield
    log.setLevel(level)


# -- driving one agent -----------------------------------------------------------------
_JOURNALS = itertools.count(1)


def make_agent(tree: Tree, **overrides: Any) -> Tuple[Agent, MemoryTransport]:
    settings: Dict[str, Any] = dict(
        data_root=tree.root, admission_max_load_per_cpu=0, admission_min_free_mem_perc=0,
        heartbeat_interval_sec=3600, reconnect_initial_sec=0.01, max_procs=4, python_exec=sys.executable,
        job_nice=0, oncat_url="http://127.0.0.1:9",
        journal_path=os.path.join(os.path.dirname(tree.root), "journal-%d.db" % next(_JOURNALS)),
        processors=("reduction", "reduction_himem", "oncat", "oncat_reduced", "create_script"))
    settings.update(overrides)
    cfg = Config(**settings)
    holder: Dict[str, MemoryTransport] = {}

    def factory(sink: Sink) -> MemoryTransport:
        holder["t"] = MemoryTransport(sink)
        return holder["t"]

    agent = Agent(cfg, build(cfg, "fuzzhost"), "fuzzhost", factory, {"PATH": os.environ.get("PATH", "")})
    agent.run_once(0)
    assert agent.connected
    return agent, holder["t"]


def spin(agent: Agent, until: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "%s within %.0f s" % (what, timeout)
        agent.run_once(max_wait=0.01)


def shallow(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` on a new thread, whose stack is as shallow as the daemon's, not pytest's.

    Nesting just below the recursion limit breaks only code that runs deeper than the
    parser did; under pytest's deep stack the parser itself gives up first.  Whatever
    ``fn`` raises is raised here."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fuzz-loop") as pool:
        return pool.submit(fn, *args, **kwargs).result()


def deliver(tree: Tree, queue_key: str, body: bytes, **overrides: Any) -> List[Tuple[str, bytes]]:
    """Send one message through a fresh agent; check its settlement; return what the agent sent."""
    return shallow(_deliver, tree, queue_key, body, **overrides)


def _deliver(tree: Tree, queue_key: str, body: bytes, **overrides: Any) -> List[Tuple[str, bytes]]:
    agent, transport = make_agent(tree, **overrides)
    before = len(transport.sent)
    queue = agent.config.destination(queue_key)
    message_id = transport.publish(queue, body.replace(ROOT_TOKEN.encode(), tree.root.encode()))
    spin(agent, lambda: bool(transport.acked), 20.0, "the message was not acked")
    for _ in range(5):
        agent.run_once(max_wait=0.01)
    assert transport.acked == [message_id], "settled %d times" % len(transport.acked)
    assert not agent.runs and agent.slots.running == 0 and not len(agent.outbox)
    assert not transport.queues[queue], "the message went back to the queue after its ack"
    chatter = (agent.config.heart_beat, agent.config.fleet_status)
    return [(dest, out) for dest, out, _h in transport.sent[before:] if dest not in chatter]


def check_outcomes(tree: Tree, sent: List[Tuple[str, bytes]]) -> None:
    """Exactly one final outcome, at most one of them an error, each a JSON object.

    The agents here use the default destination names, so a default Config names them."""
    cfg = Config()
    errors = {cfg.destination(k) for k in ERROR_KEYS}
    started = {cfg.destination(k) for k in STARTED_KEYS}
    final = [(dest, body) for dest, body in sent if dest not in started]
    assert len(final) == 1, "expected one outcome, got %r" % [d for d, _b in final]
    assert sum(1 for dest, _body in sent if dest in errors) <= 1
    assert len([d for d, _b in sent if d in started]) <= 1
    for dest, body in sent:
        parsed = json.loads(body.decode("utf-8"))
        assert isinstance(parsed, dict)
        if dest in errors:
            assert isinstance(parsed["error"], str) and parsed["error"]
            assert "internal error" not in parsed["error"], "input reached a processor bug: %s" % parsed["error"]
            assert parsed["information"] == "fuzzhost"
        if "raw" in parsed:
            assert len(parsed["raw"]) <= 4 * RAW_ECHO_LIMIT + 40, "the echo of an unusable body is not bounded"
    assert tree.outside_listing() == ["secret.nxs.h5"], "something was written outside the data root"


# -- strategies ----------------------------------------------------------------------------
def base_run(run_number: Any = "1") -> Dict[str, Any]:
    return {"facility": "SNS", "instrument": INST, "ipts": IPTS, "run_number": run_number,
            "data_file": "%s/SNS/%s/%s/nexus/%s_1.nxs.h5" % (ROOT_TOKEN, INST, IPTS, INST)}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

random_bytes = st.binary(max_size=4096)

valid_runs = st.builds(
    lambda number, extra: dumps(dict(base_run(number), **extra)),
    st.one_of(st.integers(0, 10 ** 30), st.from_regex(r"\A[0-9]{1,20}\Z")),
    st.dictionaries(st.sampled_from(("attempt", "retry_in", "information", "comment")), json_scalars, max_size=2))

wrong_types = st.builds(lambda changes: dumps(dict(base_run(), **changes)),
                        st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=4))

missing_fields = st.builds(lambda drop: dumps({k: v for k, v in base_run().items() if k not in drop}),
                           st.sets(st.sampled_from(tuple(base_run())), min_size=1))

BAD_BYTES = (b"\xff", b"\xfe\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc3")
invalid_utf8 = st.builds(
    lambda body, where, bad: body[:where % (len(body) + 1)] + bad + body[where % (len(body) + 1):],
    st.one_of(valid_runs, wrong_types, random_bytes), st.integers(0, 10 ** 6), st.sampled_from(BAD_BYTES))


def nest(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a": ' * depth + "1" + "}" * depth


def nested_body(depth: int, kind: str, where: str) -> bytes:
    inner = nest(depth, kind)
    if where == "top":
        return inner.encode()
    run = dumps(base_run())[:-1]
    if where == "reduction_arguments":
        return run + b', "reduction_arguments": {"standard_vars": {"x": ' + inner.encode() + b"}}}"
    return run + b', "%s": ' % where.encode() + inner.encode() + b"}"


LIMIT = sys.getrecursionlimit()
deeply_nested = st.builds(nested_body, st.one_of(st.integers(1, 5000), st.integers(LIMIT - 60, LIMIT + 10)),
                          st.sampled_from(("list", "dict")),
                          st.sampled_from(("top", "instrument", "data_file", "extra", "reduction_arguments")))

HUGE_SIZES = (4096, 65536, 500000, MB - 200, MB - 100, MB, 2 * MB)
huge_strings = st.builds(lambda field, size, char: dumps(dict(base_run(), **{field: char * size})),
                         st.sampled_from(FIELDS + ("extra",)), st.sampled_from(HUGE_SIZES),
                         st.sampled_from(("A", "/", "..", "\x00", "\u00e9", "\ud800", "1")))

PATH_PARTS = ("..", ".", "", "SNS", INST, IPTS, "nexus", "outside", "secret.nxs.h5", "link_out.nxs.h5",
              "link_dir", "link_passwd.nxs.h5", "a_directory.nxs.h5", "a_fifo.nxs.h5", "NOOP_1.nxs.h5",
              "\x00", "~", "etc", "passwd", "proc", "self", "fd", "0", "dev", "zero", "file:", "C:\\", "%2e%2e",
              "\n", "\ud800", "\udcff", "\u00e9")
path_strings = st.builds(lambda absolute, parts: ((ROOT_TOKEN + "/") if absolute else "") + "/".join(parts),
                         st.sampled_from((True, False, False)), st.lists(st.sampled_from(PATH_PARTS), max_size=10))
FIXED_PATHS = ("/etc/passwd", "/dev/zero", "/dev/stdin", "/proc/self/fd/0", "/", "", "//", ".", "..",
               ROOT_TOKEN, ROOT_TOKEN + "/../outside/secret.nxs.h5", ROOT_TOKEN + "/SNS/NOOP/IPTS-1/nexus/link_dir/x",
               ROOT_TOKEN + "/SNS/NOOP/IPTS-1/nexus/NOOP_1.nxs.h5\x00.txt", "../../../../etc/passwd",
               ROOT_TOKEN + "//SNS/./NOOP/IPTS-1/nexus/NOOP_1.nxs.h5", "~root/.ssh/id_rsa")
NAME_TRICKS = ("..", ".", "/", "/etc", "NOOP/..", "../NOOP", "NOOP\x00", "NOOP/../../outside", "~", "",
               "a" * 65, "NOOP\n", "-rf", ".hidden", "N OOP", "NO;OP", "\u00c9", "IPTS-1/../..")
path_tricks = st.one_of(
    st.builds(lambda p: dumps(dict(base_run(), data_file=p)), st.one_of(path_strings, st.sampled_from(FIXED_PATHS))),
    st.builds(lambda field, name: dumps(dict(base_run(), **{field: name})),
              st.sampled_from(("facility", "instrument", "ipts")), st.sampled_from(NAME_TRICKS)),
    st.builds(lambda names: dumps(dict(base_run(), reduction_arguments={"standard_vars": {n: n for n in names}})),
              st.lists(st.sampled_from(NAME_TRICKS + ("x", "__import__", "os", "sys")), min_size=1, max_size=3)))

nul_bytes = st.one_of(
    st.builds(lambda n: b"\x00" * n, st.integers(0, 100)),
    st.builds(lambda field: dumps(base_run())[:-1] + b', "%s": "a\x00b"}' % field.encode(), st.sampled_from(FIELDS)),
    st.builds(lambda field: dumps(dict(base_run(), **{field: "NOOP\x00"})), st.sampled_from(FIELDS)),
    st.builds(lambda body: body + b"\x00", st.one_of(valid_runs, wrong_types)))

ten_megabytes = st.builds(lambda fill, head: head + fill * (10 * MB), st.sampled_from((b"A", b"\x00", b"\xff", b"[")),
                          st.sampled_from((b"", b'{"instrument": "NOOP", "x": "', dumps(base_run())[:-1])))

hostile = st.one_of(random_bytes, invalid_utf8, deeply_nested, huge_strings, wrong_types, missing_fields,
                    path_tricks, nul_bytes, ten_megabytes, valid_runs)


# -- the properties ------------------------------------------------------------------------
@FUZZ_SETTINGS
@given(queue_key=st.sampled_from(RUN_QUEUES), body=hostile)
def test_every_message_is_settled_once_with_one_outcome(tree: Tree, queue_key: str, body: bytes) -> None:
    sent = deliver(tree, queue_key, body, communication_only=True)
    check_outcomes(tree, sent)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.large_base_example])
@given(body=st.one_of(valid_runs, wrong_types, path_tricks, deeply_nested, nul_bytes))
def test_real_no_op_jobs_settle_once_with_one_outcome(tree: Tree, body: bytes) -> None:
    """Without communication_only: valid runs run the real no-op reduce script."""
    sent = deliver(tree, "reduction_data_ready", body, processors=("reduction", "create_script"))
    check_outcomes(tree, sent)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(topic_key=st.sampled_from(("heartbeat_ping", "cancel_fanout")),
       body=st.one_of(random_bytes, invalid_utf8, deeply_nested, nul_bytes, wrong_types,
                      st.builds(lambda reply: dumps({"reply_to": reply}), st.one_of(json_values, path_strings)),
                      st.builds(lambda extra: dumps(dict(dict(base_run(), cancel=True), **extra)),
                                st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2))))
def test_topic_messages_never_break_the_loop(tree: Tree, topic_key: str, body: bytes) -> None:
    """Pings and cancel fan-outs are not acked; they may get one reply and must never raise."""
    shallow(_topic, tree, topic_key, body)


def _topic(tree: Tree, topic_key: str, body: bytes) -> None:
    agent, transport = make_agent(tree, communication_only=True)
    before = len(transport.sent)
    transport.topic(agent.config.destination(topic_key), body.replace(ROOT_TOKEN.encode(), tree.root.encode()))
    for _ in range(5):
        agent.run_once(max_wait=0.01)
    replies = [d for d, _b, _h in transport.sent[before:] if d not in (agent.config.heart_beat,
                                                                      agent.config.fleet_status)]
    assert len(replies) <= 1 and not transport.acked and not agent.runs


def test_ten_megabyte_body_is_rejected_by_size_with_a_short_echo(tree: Tree) -> None:
    body = dumps(base_run())[:-1] + b', "x": "' + b"A" * (10 * MB) + b'"}'
    sent = deliver(tree, "reduction_data_ready", body, communication_only=True)
    assert [d for d, _b in sent] == ["/queue/POSTPROCESS.ERROR"]
    error = json.loads(sent[0][1])
    size = len(body.replace(ROOT_TOKEN.encode(), tree.root.encode()))
    assert error["error"] == "Message body too large: %d bytes, limit %d" % (size, MB)
    assert len(sent[0][1]) < 2048


def test_size_limit_is_configurable(tree: Tree) -> None:
    body = dumps(dict(base_run(), comment="x" * 5000))
    rejected = deliver(tree, "reduction_data_ready", body, communication_only=True, max_body_bytes=4096)
    assert json.loads(rejected[0][1])["error"].startswith("Message body too large")
    accepted = deliver(tree, "reduction_data_ready", body, communication_only=True, max_body_bytes=8192)
    assert [d for d, _b in accepted] == ["/queue/REDUCTION.STARTED", "/queue/REDUCTION.COMPLETE"]


def test_valid_run_completes_with_the_real_script(tree: Tree) -> None:
    sent = deliver(tree, "reduction_data_ready", dumps(base_run()), processors=("reduction",))
    assert [d for d, _b in sent] == ["/queue/REDUCTION.STARTED", "/queue/REDUCTION.COMPLETE"]


def first_error(sent: List[Tuple[str, bytes]]) -> Optional[str]:
    for _dest, body in sent:
        error = json.loads(body).get("error")
        if error:
            return str(error)
    return None


@pytest.mark.parametrize("where", ["instrument", "data_file", "extra", "reduction_arguments"])
def test_nesting_just_below_the_recursion_limit_is_an_error_not_a_crash(tree: Tree, where: str) -> None:
    depth = LIMIT - 16
    sent = deliver(tree, "reduction_data_ready", nested_body(depth, "list", where), communication_only=True)
    check_outcomes(tree, sent)
    assert [d for d, _b in sent] == ["/queue/POSTPROCESS.ERROR"]
    assert "nested too deeply" in (first_error(sent) or "")


def test_nesting_limit_boundary(tree: Tree) -> None:
    at_limit = deliver(tree, "reduction_data_ready", nested_body(MAX_DEPTH - 1, "dict", "extra"),
                       communication_only=True)
    assert [d for d, _b in at_limit] == ["/queue/REDUCTION.STARTED", "/queue/REDUCTION.COMPLETE"]
    beyond = deliver(tree, "reduction_data_ready", nested_body(MAX_DEPTH, "dict", "extra"), communication_only=True)
    assert first_error(beyond) == "Malformed JSON: nested too deeply (more than %d levels)" % MAX_DEPTH


@pytest.mark.parametrize("depth", [LIMIT - 40, LIMIT - 16, LIMIT - 8])
def test_deeply_nested_ping_never_breaks_the_loop(tree: Tree, depth: int) -> None:
    body = b'{"reply_to": "/queue/PONG", "x": ' + nest(depth, "list").encode() + b"}"
    shallow(_topic, tree, "heartbeat_ping", body)


NEXUS = ROOT_TOKEN + "/SNS/NOOP/IPTS-1/nexus/"


@pytest.mark.parametrize("data_file, error", [
    (NEXUS + "link_out.nxs.h5", "Data file is behind an untrusted link"),
    (NEXUS + "link_dir/secret.nxs.h5", "Data file is behind an untrusted link"),
    (NEXUS + "link_passwd.nxs.h5", "Data file is behind an untrusted link"),
    (ROOT_TOKEN + "/../outside/secret.nxs.h5", "Data file is outside the data root"),
    (NEXUS + "../../../../../outside/secret.nxs.h5", "Data file is outside the data root"),
    ("/etc/passwd", "Data file is outside the data root"),
    ("SNS/NOOP/IPTS-1/nexus/NOOP_1.nxs.h5", "Data file is outside the data root"),
    ("../../../../etc/passwd", "Data file is outside the data root"),
    (NEXUS + "a_directory.nxs.h5", "Data file open error"),
    (NEXUS + "a_fifo.nxs.h5", "Data file open error"),
    (NEXUS + "NOOP_1.nxs.h5\x00.txt", "Data file is not a path"),
    (NEXUS + "NOOP_2.nxs.h5", "Data file not found"),
    (NEXUS + "\ud800.nxs.h5", "Data file is not a path"),
    (NEXUS + "\udcff.nxs.h5", "Data file not found"),
])
def test_path_tricks_are_refused_before_any_job(tree: Tree, data_file: str, error: str) -> None:
    sent = deliver(tree, "reduction_data_ready", dumps(dict(base_run(), data_file=data_file)),
                   processors=("reduction",))
    assert [d for d, _b in sent] == ["/queue/POSTPROCESS.ERROR"]
    assert (first_error(sent) or "").startswith(error)
