"""The promise, measured: what the harness checks from the outcomes and the jobs' own marks.

Requests of one run are sent one after another (a re-request only after the previous one
was answered), so an outcome or an execution belongs to the latest request of its run sent
before it.  The checks:

1. lost: a request with no terminal outcome;
2. overlapping: two executions of one run running at once, on any hosts;
3. duplicate outcomes: a request answered more than once;
4. repeated after confirmation: an execution of a request that started after its outcome arrived;
5. re-requests not run: a repeated request (same body again) that never executed, uncancelled;
6. cancels that silenced a later request: answered "cancelled" though no cancel came after it;
7. busy stalls: a request waited unstarted for longer than ``stall_sec`` while a calm host had
   a free slot; a host is calm when no fault touched it in the last ``settle`` seconds (an
   agent kill touches its host only, every other fault touches every host).
Plus the time to drain: from the end of the last fault to the last outcome.
"""

import collections
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from tests.support.chaos.fleet import Execution

TERMINAL = ("reduction_complete", "reduction_error", "reduction_disabled", "postprocess_error")


@dataclass
class Request:
    rid: int
    run: int
    kind: str
    sent: float
    generation: int
    cancels: List[float] = field(default_factory=list)
    #: (time, kind, error, information: the host name of the agent that sent it)
    outcomes: List[Tuple[float, str, str, str]] = field(default_factory=list)
    executions: List[Execution] = field(default_factory=list)


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float


@dataclass
class Figures:
    requests: int = 0
    runs: int = 0
    faults: Dict[str, int] = field(default_factory=dict)
    executions: int = 0
    killed_with_agent: int = 0
    vanished: int = 0
    lost: int = 0
    overlapping: int = 0
    duplicate_outcomes: int = 0
    #: Copies of one outcome around a broker kill: the broker stored it but its receipt died with
    #: it, so the agent sent it again.  Artemis drops such a copy (_AMQ_DUPL_ID); ActiveMQ Classic
    #: and RabbitMQ cannot (docs/delivery.md, "Limits"), so there it is counted apart.
    resent_after_lost_receipt: int = 0
    repeated_after_confirm: int = 0
    rerequests_not_run: int = 0
    cancels_silencing: int = 0
    busy_stalls: int = 0
    longest_stall_sec: float = 0.0
    drain_sec: Optional[float] = None
    examples: Dict[str, List[str]] = field(default_factory=dict)

    VIOLATIONS = ("lost", "overlapping", "duplicate_outcomes", "repeated_after_confirm",
                  "rerequests_not_run", "cancels_silencing", "busy_stalls")

    def violations(self) -> Dict[str, int]:
        return {name: getattr(self, name) for name in self.VIOLATIONS if getattr(self, name)}

    def example(self, name: str, text: str) -> None:
        found = self.examples.setdefault(name, [])
        if len(found) < 5:
            found.append(text)


def _resent_after_lost_receipt(request: Request, faults: List[Fault]) -> bool:
    """Identical outcomes from one agent (the one that ran the job, if it ran), of at most one
    execution, and between the job's end and the last copy a fault that can cut that agent's
    connection with a SEND in flight: a broker kill, a slow link (heartbeats starve), or a
    partition of its host.  The agent sends again an outcome whose receipt it never got; only
    Artemis drops the copy (docs/delivery.md)."""
    if len(set(o[1:] for o in request.outcomes)) != 1 or len(request.executions) > 1:
        return False
    sender = request.outcomes[0][3]
    hosts = {e.host for e in request.executions} or {sender}
    if sender not in hosts:
        return False
    done = max((e.end for e in request.executions), default=request.outcomes[0][0])
    last = request.outcomes[-1][0]
    return any((f.kind in ("broker_kill", "slow") or (f.kind == "partition" and f.target in hosts))
               and f.start <= last and f.end >= done - 1.0 for f in faults)


def _owner(by_run: Dict[int, List[Request]], run: int, when: float) -> Optional[Request]:
    owner = None
    for request in by_run.get(run, []):
        if request.sent <= when:
            owner = request
    return owner


def check(requests: List[Request], outcomes: List[Tuple[float, str, Dict[str, Any]]],
          destinations: Dict[str, str], executions: List[Execution], faults: List[Fault],
          hosts: List[str], max_procs: int, settle: float, stall_sec: float, window: Tuple[float, float]) -> Figures:
    """``outcomes`` are (time, destination, body); ``destinations`` maps a destination to its kind."""
    fig = Figures(requests=len(requests), runs=len({r.run for r in requests}), executions=len(executions))
    fig.faults = dict(collections.Counter(f.kind for f in faults))
    by_run: Dict[int, List[Request]] = collections.defaultdict(list)
    for request in sorted(requests, key=lambda r: r.sent):
        by_run[request.run].append(request)
    for when, dest, body in outcomes:
        kind = destinations.get(dest)
        if kind not in TERMINAL or not str(body.get("run_number", "")).isdigit():
            continue
        owner = _owner(by_run, int(body["run_number"]), when)
        if owner is not None:
            owner.outcomes.append((when, kind, str(body.get("error", "")), str(body.get("information", ""))))
    for execution in executions:
        owner = _owner(by_run, execution.run, execution.start)
        if owner is not None:
            owner.executions.append(execution)

    for request in requests:
        label = "run %d request %d (%s, sent %.1f)" % (request.run, request.generation, request.kind, request.sent)
        if not request.outcomes:
            fig.lost += 1
            fig.example("lost", label)
            continue
        if len(request.outcomes) > 1 and _resent_after_lost_receipt(request, faults):
            fig.resent_after_lost_receipt += len(request.outcomes) - 1
            fig.example("resent_after_lost_receipt", "%s: %s" % (label, [o[1] for o in request.outcomes]))
        elif len(request.outcomes) > 1:
            fig.duplicate_outcomes += len(request.outcomes) - 1
            fig.example("duplicate_outcomes", "%s: %s" % (label, [o[1] for o in request.outcomes]))
        confirmed = request.outcomes[0][0]
        late = [e for e in request.executions if e.start > confirmed]
        if late:
            fig.repeated_after_confirm += len(late)
            fig.example("repeated_after_confirm", "%s: answered %.1f, ran again on %s at %.1f" % (
                label, confirmed, late[0].host, late[0].start))
        fig.killed_with_agent += sum(1 for e in request.executions if e.status == "killed")
        fig.vanished += sum(1 for e in request.executions if e.status == "vanished")
        cancelled = any("cancel" in o[2].lower() for o in request.outcomes)
        if request.generation > 1 and not request.executions and not request.cancels:
            fig.rerequests_not_run += 1
            fig.example("rerequests_not_run", "%s: answered %s without running" % (
                label, [o[1] for o in request.outcomes]))
        if cancelled and not request.cancels:
            fig.cancels_silencing += 1
            fig.example("cancels_silencing", "%s: answered cancelled, no cancel sent after it" % label)

    for run, runs in by_run.items():
        spans = sorted((e.start, e.end, e.host) for r in runs for e in r.executions)
        for (s1, e1, h1), (s2, _, h2) in zip(spans, spans[1:]):
            if s2 < e1:
                fig.overlapping += 1
                fig.example("overlapping", "run %d: %s from %.1f to %.1f, %s from %.1f" % (run, h1, s1, e1, h2, s2))

    _stalls(fig, requests, executions, faults, hosts, max_procs, settle, stall_sec, window)
    if faults:
        answers = [r.outcomes[0][0] for r in requests if r.outcomes]
        last_fault = max(f.end for f in faults)
        if not fig.lost and answers:
            fig.drain_sec = max(0.0, max(answers) - last_fault)
    return fig


def _stalls(fig: Figures, requests: List[Request], executions: List[Execution], faults: List[Fault],
            hosts: List[str], max_procs: int, settle: float, stall_sec: float, window: Tuple[float, float]) -> None:
    """Spells where work waited unstarted while a calm host had a free slot."""
    step = 0.5
    t = window[0]
    spell_start: Optional[float] = None
    at_start = ""
    while t <= window[1]:
        near = [f for f in faults if f.start - 0.5 <= t <= f.end + settle]
        calm = [h for h in hosts if all(f.kind == "agent_kill" and f.target != h for f in near)]
        waiting = [r for r in requests if r.sent <= t - 1.0 and not r.cancels
                   and not any(o[0] <= t for o in r.outcomes) and not any(e.start <= t for e in r.executions)]
        running = collections.Counter(e.host for e in executions
                                      if e.start <= t < e.end)
        stalled = bool(waiting) and any(running[h] < max_procs for h in calm)
        if stalled and spell_start is None:
            spell_start, at_start = t, "%d waiting (%s), running per host %s" % (
                len(waiting), ", ".join("run %d request %d" % (r.run, r.generation) for r in waiting[:5]),
                {h: running[h] for h in calm})
        if (not stalled or t + step > window[1]) and spell_start is not None:
            length = t - spell_start
            fig.longest_stall_sec = max(fig.longest_stall_sec, length)
            if length > stall_sec:
                fig.busy_stalls += 1
                fig.example("busy_stalls", "%.1f s from %.1f: at its start %s" % (length, spell_start, at_start))
            spell_start = None
        t += step
