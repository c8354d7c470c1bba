"""Agents on the in-memory transport, driven step by step by the test (see test_agent_units.py)."""

import atexit
import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from postprocessing.agent.agent import Agent
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage
from postprocessing.messages import RunRequest
from postprocessing.processors.base import JobContext, Outcome, Processor, Work
from postprocessing.transport.memory import MemoryTransport

QUEUE = "/queue/WORK"
_JOURNALS = tempfile.mkdtemp(prefix="pp-memagent-")
atexit.register(shutil.rmtree, _JOURNALS, True)


@dataclasses.dataclass(frozen=True)
class Request:
    """What a cancel matches (the fields of a RunRequest that cancels look at)."""

    instrument: Optional[str]
    run_number: str
    ipts: Optional[str] = None


class Gate(Processor):
    """A processor whose jobs wait for the test to open their gate (``"quick": true`` ones do not)."""

    name = "gate"
    queue_key = "reduction_data_ready"
    cancellable = True

    def __init__(self, config: Config, hostname: str) -> None:
        super().__init__(config, hostname)
        self.gate = threading.Event()
        self.ran: List[str] = []

    def accept(self, data: Dict[str, Any]) -> Work:
        if "n" not in data:
            raise InvalidMessage("N is missing")
        if "data_file" in data:  # a run in the facility tree: its reduction is claimed (claims.py)
            request = RunRequest(data, "SNS", data["inst"], data["ipts"], str(data["n"]), data["data_file"])
            return Work(data, "run %s" % data["n"], data["inst"], request)
        return Work(data, "run %s" % data["n"], data.get("inst"), Request(data.get("inst"), str(data["n"])))

    def run(self, ctx: JobContext) -> Outcome:
        ctx.publish("/queue/STARTED", {"n": ctx.work.fields["n"]})
        if not ctx.work.fields.get("quick"):
            self.gate.wait(10)
        if ctx.cancelled_by:
            return self.cancelled(ctx.work, ctx.cancelled_by)
        self.ran.append(ctx.work.fields["n"])
        return ctx.reply("/queue/DONE")


def make(transport: Optional[MemoryTransport] = None, journal: str = "", hostname: str = "host",
         **overrides: Any) -> Tuple[Agent, MemoryTransport, Gate]:
    """An agent on ``hostname`` with its own journal (or ``journal``), on a new broker (or on ``transport``)."""
    cfg = Config(reduction_data_ready="WORK", admission_max_load_per_cpu=0, admission_min_free_mem_perc=0,
                 heartbeat_interval_sec=60, reconnect_initial_sec=0.01,
                 journal_path=journal or os.path.join(tempfile.mkdtemp(dir=_JOURNALS), "journal.db"),
                 **overrides)
    holder: Dict[str, MemoryTransport] = {}

    def factory(sink: Callable[[object], None]) -> MemoryTransport:
        if transport is not None:
            transport.attach(sink)
            holder["t"] = transport
        else:
            holder["t"] = MemoryTransport(sink)
        return holder["t"]

    processor = Gate(cfg, hostname)
    agent = Agent(cfg, [processor], hostname, factory, {})
    return agent, holder["t"], processor


def spin(agent: Agent, until: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        agent.run_once(max_wait=0.02)


def settle_down(agent: Agent, steps: int = 20) -> None:
    """Let the loop handle what is pending (for assertions that nothing more happens)."""
    for _ in range(steps):
        agent.run_once(0.01)


def step(*agents: Agent) -> bool:
    """One turn of each agent's loop (for conditions that need several agents to move); True."""
    for agent in agents:
        agent.run_once(0.01)
    return True


def bodies(transport: MemoryTransport, destination: str) -> List[Dict[str, Any]]:
    return [json.loads(b) for b in transport.sent_to(destination)]


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()
