"""The delivery promise on the in-memory transport (issue 10): each test reproduces one failure.

Redelivery tests run twice: with stable message ids (ActiveMQ Classic) and with a new id
for every delivery (RabbitMQ, Artemis).
"""

import json
import os
import subprocess
import sys
import time
from typing import Any, List, Tuple

import pytest

from postprocessing.agent.agent import Agent
from postprocessing.agent.observer import Observer
from postprocessing.agent.runs import RunState
from postprocessing.transport import broker_time
from postprocessing.transport.memory import MemoryTransport
from tests.support.memagent import QUEUE, bodies, body, make, settle_down, spin, step

FANOUT = "/topic/POSTPROCESSING.CANCEL"
IDS = pytest.mark.parametrize("fresh_ids", [False, True], ids=["stable-ids", "fresh-ids"])


#: The headers of a redelivered copy: the broker stamped the message when it was first sent, an
#: hour ago here, before anything the test answers.
REDELIVERED = {"redelivered": "true", "timestamp": str(int((time.time() - 3600) * 1000))}
CLAIMED_RUN = body(n="1", inst="CNCS", ipts="IPTS-1", data_file="/SNS/CNCS/IPTS-1/nexus/CNCS_1.nxs.h5")


def claimant_cut_off(tmp_path: Any, **overrides: Any) -> Tuple[bytes, Agent, MemoryTransport, Any]:
    """Agent A runs a claimed run (gated), then is cut off from its broker, which gives the
    run to another agent: the run's body, A, A's broker (refusing A until the test allows) and A's processor."""
    first, first_broker, first_proc = make(data_root=str(tmp_path), lease_refresh_sec=0.1, **overrides)
    first.run_once(0)
    first_broker.publish(QUEUE, CLAIMED_RUN)
    spin(first, lambda: bodies(first_broker, "/queue/STARTED"))
    first_broker.refuse_connect = True
    first_broker.drop_connection("cut off")
    first_broker.queues[QUEUE].clear()
    return CLAIMED_RUN, first, first_broker, first_proc


def answered_elsewhere_then_a_repeat_runs(agent: Agent, broker: MemoryTransport, proc: Any, run: bytes) -> None:
    """A redelivered copy of ``run``, answered by another agent, is settled here without running;
    the same body sent again afterwards is a new request and runs."""
    broker.publish(QUEUE, run, REDELIVERED)
    spin(agent, lambda: broker.acked)
    settle_down(agent)
    assert proc.ran == [] and not bodies(broker, "/queue/DONE"), "a run answered elsewhere ran again"
    broker.publish(QUEUE, run)
    spin(agent, lambda: len(broker.acked) == 2)
    assert proc.ran == ["1"], "the same request sent again later did not run"
    assert len(bodies(broker, "/queue/DONE")) == 1


def answered_and_acked_by_another_agent(tmp_path: Any, run: bytes) -> None:
    """Agent A, on a broker of its own, runs ``run`` (claimed on the shared tree), answers it and
    has its ACK confirmed: the run's claim is settled."""
    first, first_broker, first_proc = make(data_root=str(tmp_path))
    first_proc.gate.set()
    first.run_once(0)
    first_broker.publish(QUEUE, run)
    spin(first, lambda: first_broker.acked and not first.runs)
    settle_down(first)


def acked_elsewhere_then_the_broker_died(tmp_path: Any) -> Tuple[bytes, Agent, MemoryTransport, Any]:
    """A answered and acked run 1; then B's broker, which forgets ACKs confirmed just before a
    SIGKILL (RabbitMQ), died and B reconnected: the run's body, B, B's broker and B's processor."""
    run = body(n="1", inst="CNCS", ipts="IPTS-1", data_file="/SNS/CNCS/IPTS-1/nexus/CNCS_1.nxs.h5")
    answered_and_acked_by_another_agent(tmp_path, run)
    other, broker, proc = make(data_root=str(tmp_path))
    broker.forgets_confirmed_acks = True
    proc.gate.set()
    other.run_once(0)
    broker.drop_connection("broker SIGKILLed")
    spin(other, lambda: other.connected)
    return run, other, broker, proc


def test_busy_agent_takes_work_into_free_slots_after_a_reconnect():
    """Promise 7: one long job of 3 slots, broker restart; two new runs must start at once."""
    agent, transport, proc = make(max_procs=3)
    agent.run_once(0)
    transport.publish(QUEUE, body(n="long"))
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.drop_connection("broker restarted")
    spin(agent, lambda: agent.connected and any(r.delivery.epoch == transport.epoch for r in agent.runs))
    transport.publish(QUEUE, body(n="a", quick=True))
    transport.publish(QUEUE, body(n="b", quick=True))
    spin(agent, lambda: sorted(proc.ran) == ["a", "b"])
    assert not proc.gate.is_set(), "the new runs waited for the long job"
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 3)
    assert sorted(proc.ran) == ["a", "b", "long"]


@IDS
def test_full_agent_takes_back_its_running_run_after_a_reconnect(fresh_ids):
    """A full agent must not leave the run it still runs on the queue for another agent."""
    agent, transport, proc = make(max_procs=1)
    transport.fresh_ids = fresh_ids
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1"))
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.drop_connection("broker restarted")
    spin(agent, lambda: agent.connected)
    spin(agent, lambda: not transport.queues[QUEUE], timeout=2)
    proc.gate.set()
    spin(agent, lambda: transport.acked)
    assert proc.ran == ["1"] and len(bodies(transport, "/queue/DONE")) == 1


@IDS
def test_stop_around_a_reconnect_does_not_run_a_confirmed_run_again(fresh_ids):
    """Outcome confirmed after the reconnect, message not acked, agent stopped: no re-run on restart."""
    agent, transport, proc = make(max_procs=1, shutdown_timeout_sec=1)
    transport.fresh_ids = fresh_ids
    journal = agent.config.journal_path
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1"))
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.drop_connection("broker restarted")
    transport.refuse_connect = True
    agent.run_once(0.05)
    proc.gate.set()
    spin(agent, lambda: not agent.runs.count(RunState.RUNNING))
    agent.request_stop("test")
    transport.refuse_connect = False
    done: List[bool] = []
    spin(agent, lambda: done.append(agent.run_once(0.02)) or done[-1])
    agent.transport.disconnect()
    assert len(bodies(transport, "/queue/DONE")) == 1

    again, _t, proc2 = make(transport=transport, journal=journal, max_procs=1)
    proc2.gate.set()
    spin(again, lambda: not transport.queues[QUEUE] and not again.runs and again.connected)
    settle_down(again)
    assert proc2.ran == [], "a run whose outcome was confirmed ran again after the restart"
    assert len(bodies(transport, "/queue/DONE")) == 1
    assert len(transport.acked) == 1


class Refusals(Observer):
    def __init__(self) -> None:
        self.refused: List[Any] = []

    def send_refused(self, destination: str, reason: str) -> None:
        self.refused.append((destination, reason))


def test_refused_outcome_is_sent_again_and_reported():
    agent, transport, proc = make()
    agent.observer = observer = Refusals()
    proc.gate.set()
    transport.refuse("/queue/DONE", 2, "address full")
    agent.run_once(0)
    msg = transport.publish(QUEUE, body(n="1"))
    spin(agent, lambda: transport.acked)
    assert transport.acked == [msg]
    assert len(bodies(transport, "/queue/DONE")) == 1
    assert observer.refused == [("/queue/DONE", "address full")] * 2
    assert agent.connected, "a refused send is not a lost connection"


def test_a_refusal_that_closes_the_connection_makes_no_reconnect_loop():
    """Artemis closes the connection after it refuses a SEND: the refused outcome waits for its
    backoff after the reconnect instead of being sent again at once, so there is one reconnect
    per refusal and the run is settled once when the broker takes the outcome."""
    agent, transport, proc = make(reconnect_max_sec=0.05)
    agent.outbox = type(agent.outbox)(transport, 0.3, 0.3)
    transport.close_on_refusal = True
    proc.gate.set()
    transport.refuse("/queue/DONE", 10 ** 6, "address full")
    agent.run_once(0)
    msg = transport.publish(QUEUE, body(n="1"))
    deadline = time.monotonic() + 1.5
    spin(agent, lambda: time.monotonic() > deadline)
    assert transport.epoch <= 7, "%d connections in 1.5 s: a reconnect loop" % transport.epoch
    assert not transport.acked
    transport.refuse("/queue/DONE", 0)
    spin(agent, lambda: transport.acked, timeout=10)
    assert transport.acked == [msg]
    assert len(bodies(transport, "/queue/DONE")) == 1
    assert proc.ran == ["1"]


@IDS
def test_a_repeat_that_arrives_while_the_first_ack_is_in_flight_runs(fresh_ids):
    """Promise 5: the first request's ACK is on its way (no receipt yet) on a live connection, so
    the broker cannot be redelivering it: the same body arriving now is a new request."""
    agent, transport, proc = make()
    transport.fresh_ids = fresh_ids
    transport.hold_ack_receipts = True
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1", quick=True))
    spin(agent, lambda: len(transport.acked) == 1)
    transport.publish(QUEUE, body(n="1", quick=True))
    spin(agent, lambda: len(transport.acked) == 2)
    transport.release_ack_receipts()
    settle_down(agent)
    assert proc.ran == ["1", "1"]
    assert len(bodies(transport, "/queue/DONE")) == 2


@IDS
def test_a_run_whose_confirmed_ack_the_broker_lost_is_not_run_again(fresh_ids):
    """Promise 4: RabbitMQ SIGKILLed right after it confirmed an ACK redelivers the message after
    the restart.  The run is acked without running; a later identical request still runs."""
    agent, transport, proc = make()
    transport.fresh_ids = fresh_ids
    transport.forget_acks_on_drop = transport.forgets_confirmed_acks = True
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1", quick=True))
    spin(agent, lambda: len(transport.acked) == 1)
    settle_down(agent)
    transport.drop_connection("broker SIGKILLed")
    spin(agent, lambda: len(transport.acked) == 2)
    assert proc.ran == ["1"]
    transport.forget_acks_on_drop = False
    transport.publish(QUEUE, body(n="1", quick=True))
    spin(agent, lambda: len(transport.acked) == 3)
    assert proc.ran == ["1", "1"]


@IDS
def test_a_repeated_request_soon_after_a_broker_restart_runs(fresh_ids):
    """Promise 5 (found by the fault harness, ActiveMQ seed 707068): a run acked just before the
    broker restarted, then the same body sent again as a new request on the young connection.
    The broker kept its ACK, so the new message is not a redelivery: it must run."""
    agent, transport, proc = make()
    transport.fresh_ids = fresh_ids
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1", quick=True))
    spin(agent, lambda: len(transport.acked) == 1)
    settle_down(agent)
    transport.drop_connection("broker restarted")
    spin(agent, lambda: agent.connected)
    transport.publish(QUEUE, body(n="1", quick=True))
    spin(agent, lambda: len(transport.acked) == 2)
    assert proc.ran == ["1", "1"]
    assert len(bodies(transport, "/queue/DONE")) == 2


@IDS
def test_a_repeat_given_back_after_a_broker_restart_still_runs(fresh_ids):
    """Promise 5 on a broker that forgets confirmed ACKs: the repeat waits for its instrument's
    slot, is given back, and comes back marked redelivered; it is not taken for a lost ACK."""
    agent, transport, proc = make(max_procs=2, jobs_per_instrument=1)
    transport.fresh_ids = fresh_ids
    transport.forgets_confirmed_acks = True
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1", inst="X", quick=True))
    spin(agent, lambda: len(transport.acked) == 1)
    settle_down(agent)
    transport.drop_connection("broker restarted")
    spin(agent, lambda: agent.connected)
    transport.publish(QUEUE, body(n="long", inst="X"))
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.publish(QUEUE, body(n="1", inst="X", quick=True))
    spin(agent, lambda: agent.runs.in_state(RunState.WAITING))
    for run in agent.runs.in_state(RunState.WAITING):
        agent._let_go(run, "test: given back")
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 3)
    assert sorted(proc.ran) == ["1", "1", "long"]


def test_standing_cancel_does_not_answer_a_later_resubmission():
    """Promise 6: a cancel that met its run (here, on another agent) must not silence a new request."""
    first, transport, proc = make()
    proc.gate.set()
    first.run_once(0)
    transport.publish(QUEUE, body(n="5", inst="A", quick=True))
    spin(first, lambda: transport.acked)
    transport.topic("/topic/POSTPROCESSING.CANCEL", body(cancel=True, instrument="A", run_number="5"))
    settle_down(first)
    transport.publish(QUEUE, body(n="5", inst="A", quick=True))
    spin(first, lambda: len(transport.acked) == 2)
    assert proc.ran == ["5", "5"], "the resubmission was answered 'cancelled'"
    assert len(bodies(transport, "/queue/DONE")) == 2


def test_cancel_still_stops_a_run_that_arrives_after_it():
    """The other half of promise 6: a queued run that reaches us after its cancel is cancelled."""
    agent, transport, proc = make()
    proc.gate.set()
    agent.run_once(0)
    transport.topic("/topic/POSTPROCESSING.CANCEL", body(cancel=True, instrument="A", run_number="6"))
    settle_down(agent)
    transport.publish(QUEUE, body(n="6", inst="A", quick=True))
    spin(agent, lambda: transport.acked)
    assert proc.ran == []
    assert [b["error"] for b in bodies(transport, "/queue/POSTPROCESS.ERROR")] == ["cancelled by unknown"]


def cancel_through_the_queue(agent, transport, run_number):
    """A cancel sent to the cancel queue; the agent's fan-out of it is delivered back to it."""
    transport.publish(agent.config.destination("reduction_cancel"),
                      body(cancel=True, instrument="A", run_number=run_number))
    spin(agent, lambda: transport.sent_to(FANOUT))
    fanout = transport.sent_to(FANOUT)[-1]
    transport.topic(FANOUT, fanout)
    settle_down(agent)
    return json.loads(fanout)


def test_a_standing_cancel_never_silences_a_request_sent_after_it():
    """Promise 6 (fault harness, ActiveMQ seed 387403: a late cancel of a run answered 14 min
    before stood, and the run's next request, sent a minute after the cancel, was answered
    "cancelled").  Where the broker stamps its messages, a standing cancel stops only a request
    the broker took in before it."""
    agent, transport, proc = make()
    proc.gate.set()
    agent.run_once(0)
    fanout = cancel_through_the_queue(agent, transport, "7")
    time.sleep(0.01)
    transport.publish(QUEUE, body(n="7", inst="A", quick=True))
    spin(agent, lambda: bodies(transport, "/queue/DONE") or bodies(transport, "/queue/POSTPROCESS.ERROR"))
    assert proc.ran == ["7"] and not bodies(transport, "/queue/POSTPROCESS.ERROR"), "answered 'cancelled'"
    assert isinstance(fanout.get("sent_ms"), int), "the fan-out carries when the broker took the cancel in"
    # The cancel stands on for a request the broker took in before it (queued behind others).
    transport.publish(QUEUE, body(n="7", inst="A", quick=True), {"timestamp": str(fanout["sent_ms"] - 1000)})
    spin(agent, lambda: bodies(transport, "/queue/POSTPROCESS.ERROR"))
    assert proc.ran == ["7"]
    assert [b["error"] for b in bodies(transport, "/queue/POSTPROCESS.ERROR")] == ["cancelled by unknown"]


@IDS
def test_repeated_request_marked_redelivered_runs(fresh_ids):
    """Promise 5: the same body again, given back to the broker on the way, is a new request.

    A full agent: its outcome is confirmed after the reconnect before the redelivery arrives."""
    agent, transport, proc = make(max_procs=1)
    transport.fresh_ids = fresh_ids
    agent.run_once(0)
    transport.publish(QUEUE, body(n="9"))
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.drop_connection("broker restarted")
    transport.refuse_connect = True
    agent.run_once(0.05)
    proc.gate.set()
    spin(agent, lambda: not agent.runs.count(RunState.RUNNING))
    transport.refuse_connect = False
    spin(agent, lambda: transport.acked and not agent.runs and not transport.queues[QUEUE])
    assert proc.ran == ["9"]
    transport.publish(QUEUE, body(n="9"), REDELIVERED)
    spin(agent, lambda: len(transport.acked) == 2)
    assert proc.ran == ["9", "9"], "a re-reduction request was acked without running"
    assert len(bodies(transport, "/queue/DONE")) == 2


def test_deliveries_are_routed_by_their_subscription():
    """Artemis names the queue without /queue/ in the destination header."""
    agent, transport, proc = make()
    transport.bare_destinations = True
    proc.gate.set()
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1"))
    spin(agent, lambda: transport.acked)
    assert proc.ran == ["1"] and not bodies(transport, "/queue/POSTPROCESS.ERROR")


@IDS
def test_confirmed_run_whose_ack_was_lost_is_answered_from_the_journal(fresh_ids):
    """Promise 4 after a crash: outcome confirmed, ACK never confirmed, agent gone."""
    agent, transport, proc = make()
    transport.fresh_ids = fresh_ids
    journal = agent.config.journal_path
    proc.gate.set()
    agent.run_once(0)
    transport.lose_acks = True
    transport.publish(QUEUE, body(n="3"))
    spin(agent, lambda: bodies(transport, "/queue/DONE") and not agent.runs)
    transport.lose_acks = False
    again, _t, proc2 = make(transport=transport, journal=journal)
    spin(again, lambda: transport.acked)
    settle_down(again)
    assert proc2.ran == [] and len(bodies(transport, "/queue/DONE")) == 1


def test_refused_sends_are_counted_for_prometheus():
    from postprocessing.agent.metrics import MetricsObserver

    agent, transport, proc = make()
    agent.observer = observer = MetricsObserver(agent.config)
    proc.gate.set()
    transport.refuse("/queue/DONE", 3, "security")
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1"))
    spin(agent, lambda: transport.acked)
    assert observer.registry.get_sample_value("postprocessing_sends_refused_total",
                                              {"destination": "/queue/DONE"}) == 3


def test_a_cancel_closed_by_another_agent_stands_no_more():
    """Another agent met the cancel's run and said so on the topic: a later request runs here."""
    agent, transport, proc = make()
    agent.run_once(0)
    transport.topic("/topic/POSTPROCESSING.CANCEL", body(cancel=True, instrument="A", run_number="8"))
    settle_down(agent)
    transport.topic("/topic/POSTPROCESSING.CANCEL", body(cancel="closed", instrument="A", run_number="8"))
    settle_down(agent)
    transport.publish(QUEUE, body(n="8", inst="A", quick=True))
    spin(agent, lambda: transport.acked)
    assert proc.ran == ["8"] and not bodies(transport, "/queue/POSTPROCESS.ERROR")


def test_a_cancel_that_meets_its_run_announces_it_is_closed():
    agent, transport, proc = make()
    agent.run_once(0)
    transport.publish(QUEUE, body(n="4", inst="A"))
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.topic("/topic/POSTPROCESSING.CANCEL", body(cancel=True, instrument="A", run_number="4"))
    spin(agent, lambda: bodies(transport, "/topic/POSTPROCESSING.CANCEL"))
    assert bodies(transport, "/topic/POSTPROCESSING.CANCEL")[0]["cancel"] == "closed"
    proc.gate.set()
    spin(agent, lambda: transport.acked)


@IDS
def test_a_run_confirmed_by_an_agent_that_never_came_back_is_answered_by_another(tmp_path, fresh_ids):
    """Promise 4 across agents: A confirmed the outcome, its ACK was lost, A is gone for good."""
    run = body(n="1", inst="CNCS", ipts="IPTS-1", data_file="/SNS/CNCS/IPTS-1/nexus/CNCS_1.nxs.h5")
    first, first_broker, first_proc = make(data_root=str(tmp_path))
    first_proc.gate.set()
    first.run_once(0)
    first_broker.lose_acks = True
    first_broker.publish(QUEUE, run)
    spin(first, lambda: bodies(first_broker, "/queue/DONE") and not first.runs)

    other, broker, proc = make(data_root=str(tmp_path))
    broker.fresh_ids = fresh_ids
    proc.gate.set()
    other.run_once(0)
    answered_elsewhere_then_a_repeat_runs(other, broker, proc, run)


def test_a_standing_cancel_goes_to_the_claimant_of_a_run_redelivered_elsewhere(tmp_path):
    """Promises 3 and 6 (fault harness, ActiveMQ seed 707068): A runs a claimed run and misses the
    cancel (partitioned); the run is redelivered to B, where the cancel stands.  B must not answer
    "cancelled" beside A's outcome: it hands the cancel to A through the claim, and A answers once."""
    run, first, first_broker, first_proc = claimant_cut_off(tmp_path)

    other, broker, proc = make(data_root=str(tmp_path), lease_refresh_sec=0.1)
    other.run_once(0)
    broker.topic("/topic/POSTPROCESSING.CANCEL", body(cancel=True, instrument="CNCS", run_number="1"))
    broker.publish(QUEUE, run, REDELIVERED)
    spin(first, lambda: step(first, other) and any(r.ctx is not None and r.ctx.cancelled_by for r in first.runs))
    error = first.config.destination("postprocess_error")
    assert not bodies(broker, error) and not broker.acked, "B answered beside A"
    first_proc.gate.set()
    first_broker.refuse_connect = False
    spin(first, lambda: step(first, other) and bool(bodies(first_broker, error) and broker.acked))
    settle_down(other)
    errors = bodies(first_broker, error) + bodies(broker, error)
    assert len(errors) == 1 and errors[0]["error"].startswith("cancelled by"), errors
    assert proc.ran == [] and first_proc.ran == []
    assert not bodies(first_broker, "/queue/DONE") and not bodies(broker, "/queue/DONE")


def test_a_late_cancel_missed_by_the_agent_that_ran_the_run_does_not_silence_a_repeat(tmp_path):
    """Promise 6 (fault harness, Artemis seed 902976): a cancel goes out while A, cut off from the
    broker, finishes the run; A's outcome is confirmed only after the cancel, and nobody closes
    the cancel, so it stands on B.  A repeated request reaching B must run: the run's claim
    shows it was answered since the cancel's window opened."""
    run = body(n="1", inst="CNCS", ipts="IPTS-1", data_file="/SNS/CNCS/IPTS-1/nexus/CNCS_1.nxs.h5")
    other, broker, proc = make(data_root=str(tmp_path))
    proc.gate.set()
    other.run_once(0)
    broker.topic("/topic/POSTPROCESSING.CANCEL", body(cancel=True, instrument="CNCS", run_number="1"))
    settle_down(other)

    answered_and_acked_by_another_agent(tmp_path, run)

    broker.publish(QUEUE, run)
    spin(other, lambda: broker.acked)
    assert proc.ran == ["1"], "a cancel for a run answered since silenced a later request"
    assert len(bodies(broker, "/queue/DONE")) == 1


@IDS
def test_a_redelivered_repeat_long_after_the_last_ack_runs(fresh_ids, monkeypatch):
    """Promise 5 (fault harness, RabbitMQ seed 431851): run 30 acked, its repeat delivered (so
    marked redelivered once the broker restarts), the broker SIGKILLed 12 s after the ACK.  The
    ACKs a broker forgets are those of the last fraction of a second before it died: this one
    was safe, so the redelivered repeat is a new request and runs."""
    monkeypatch.setattr("postprocessing.agent.acks.LOST_ACK_WINDOW", 0.2)
    agent, transport, proc = make()
    transport.fresh_ids = fresh_ids
    transport.forgets_confirmed_acks = True
    agent.run_once(0)
    transport.publish(QUEUE, body(n="1", quick=True))
    spin(agent, lambda: len(transport.acked) == 1)
    settle_down(agent)
    time.sleep(0.3)
    transport.drop_connection("broker SIGKILLed")
    spin(agent, lambda: agent.connected)
    transport.publish(QUEUE, body(n="1", quick=True), REDELIVERED)
    spin(agent, lambda: len(transport.acked) == 2)
    assert proc.ran == ["1", "1"]


def test_a_cancel_meeting_a_waiting_copy_of_a_run_another_agent_runs_answers_once(tmp_path):
    """Promise 3 (fault harness, RabbitMQ seed 431851): after a broker restart B holds a copy of the
    run that A runs (waiting for B's instrument slot) when the cancel goes out.  B must not answer
    "cancelled" beside A: the cancel goes to A through the claim, and B settles from A's outcome."""
    run, first, first_broker, first_proc = claimant_cut_off(tmp_path)

    other, broker, proc = make(data_root=str(tmp_path), lease_refresh_sec=0.1, max_procs=2, jobs_per_instrument=1)
    other.run_once(0)
    broker.publish(QUEUE, body(n="x", inst="CNCS"))
    spin(other, lambda: bodies(broker, "/queue/STARTED"))
    broker.publish(QUEUE, run, REDELIVERED)
    spin(other, lambda: other.runs.in_state(RunState.WAITING))
    broker.topic("/topic/POSTPROCESSING.CANCEL", body(cancel=True, instrument="CNCS", run_number="1"))
    spin(first, lambda: step(first, other) and any(r.ctx is not None and r.ctx.cancelled_by for r in first.runs))
    error = first.config.destination("postprocess_error")
    assert not bodies(broker, error), "B answered beside A"
    first_proc.gate.set()
    proc.gate.set()
    first_broker.refuse_connect = False
    spin(first, lambda: step(first, other) and bool(bodies(first_broker, error)) and len(broker.acked) == 2)
    settle_down(other)
    errors = bodies(first_broker, error) + bodies(broker, error)
    assert len(errors) == 1 and errors[0]["error"].startswith("cancelled by"), errors
    assert proc.ran == ["x"] and first_proc.ran == []


def full_on_rabbitmq(**overrides: Any) -> Tuple[Agent, MemoryTransport, Any]:
    """A RabbitMQ-like agent at max_procs 2 running a1 (instrument A) and b1 (B), with a2 (A) waiting
    on a subscription of its own for A's one slot."""
    agent, transport, proc = make(max_procs=2, jobs_per_instrument=1, **overrides)
    transport.returns_on_unsubscribe = False
    agent.run_once(0)
    transport.publish(QUEUE, body(n="a1", inst="A"))
    spin(agent, lambda: len(bodies(transport, "/queue/STARTED")) == 1)
    transport.publish(QUEUE, body(n="a2", inst="A"))
    spin(agent, lambda: agent.runs.in_state(RunState.WAITING))
    transport.publish(QUEUE, body(n="b1", inst="B"))
    spin(agent, lambda: len(bodies(transport, "/queue/STARTED")) == 2)
    return agent, transport, proc


def test_a_full_agent_on_rabbitmq_gives_back_a_run_that_waits_for_it(monkeypatch):
    """Promise 7 (fault harness, RabbitMQ seed 785336): on RabbitMQ a full agent keeps its idle
    subscriptions, so a run can reach it and wait for one of its slots while another agent has
    a free one.  It must be given back soon (seconds), not after ``max_wait_hold_sec``."""
    monkeypatch.setattr("postprocessing.agent.holding.FULL_HOLD_SEC", 0.3)
    agent, transport, proc = full_on_rabbitmq(max_wait_hold_sec=60)
    started = time.monotonic()
    spin(agent, lambda: transport.released, timeout=5)
    assert time.monotonic() - started < 3, "the full agent kept the waiting run"
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 3)
    assert sorted(proc.ran) == ["a1", "a2", "b1"]


def test_a_full_agent_on_rabbitmq_gives_a_run_back_at_once_and_a_returning_one_after_a_while(monkeypatch):
    """Promise 7: a run waiting on a full agent's subscription on RabbitMQ goes back at once, so
    that it reaches an agent with a free slot in a few hops, not one hop per ``FULL_HOLD_SEC``.
    Back on a subscription that gave it back, it waits ``FULL_HOLD_SEC`` first, so that runs
    do not circle between full agents."""
    monkeypatch.setattr("postprocessing.agent.holding.FULL_HOLD_SEC", 1.0)
    agent, transport, proc = full_on_rabbitmq()
    full = time.monotonic()
    spin(agent, lambda: len(transport.released) == 1, timeout=5)
    first = time.monotonic()
    assert first - full < 0.5, "the full agent held a waiting run for %.1f s" % (first - full)
    spin(agent, lambda: len(transport.released) == 2, timeout=5)
    assert time.monotonic() - first >= 0.9, "a run came back and was given back at once again"
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 3)
    assert sorted(proc.ran) == ["a1", "a2", "b1"]


def test_a_full_agent_on_rabbitmq_takes_in_nothing_it_cannot_start_after_a_reconnect():
    """Promise 7 (the short fault harness in CI, RabbitMQ seed 126192: a 10 s busy stall).  After
    a reconnect a full agent opened a subscription per running job, for their redeliveries to
    rejoin them.  On RabbitMQ subscriptions stay, so each became lasting room on a full agent:
    new runs came to it, waited 2 s for its slot and went back, over and over, while another
    agent had free slots.  A full agent on RabbitMQ opens none; another agent holds the
    redeliveries on the claims, or this one takes them back once a slot frees."""
    agent, transport, proc = make(max_procs=2)
    transport.returns_on_unsubscribe = False
    agent.run_once(0)
    transport.publish(QUEUE, body(n="a1"))
    transport.publish(QUEUE, body(n="a2"))
    spin(agent, lambda: len(bodies(transport, "/queue/STARTED")) == 2)
    transport.drop_connection("broker restarted")
    redelivered = list(transport.queues[QUEUE])
    transport.queues[QUEUE].clear()  # another agent took the redeliveries, and holds them on their claims
    spin(agent, lambda: agent.connected)
    settle_down(agent)
    transport.publish(QUEUE, body(n="b"))
    settle_down(agent)
    assert "b" in [json.loads(m[1])["n"] for m in transport.queues[QUEUE]], "the full agent took in a run"
    assert not agent.runs.in_state(RunState.WAITING)
    proc.gate.set()
    spin(agent, lambda: sorted(proc.ran) == ["a1", "a2", "b"])
    for _message_id, redelivery, headers in redelivered:  # the holder went away: they come back here
        transport.publish(QUEUE, redelivery, headers)
    spin(agent, lambda: len(transport.acked) == 3)
    assert sorted(proc.ran) == ["a1", "a2", "b"]
    assert len(bodies(transport, "/queue/DONE")) == 3


def test_a_claim_won_just_as_its_claimant_answered_is_not_run_again(tmp_path, monkeypatch):
    """Promises 3 and 4 (`make chaos` on RabbitMQ, seed 429585: a request answered twice, run
    again 0.2 s after its answer).  A, cut off while its job ran, answered the run as it
    reconnected, while B took the redelivery: B looked for A's answer just before A wrote it,
    and claimed the run just after A dropped its lease.  B looks again once the claim is its own."""
    run, first, first_broker, first_proc = claimant_cut_off(tmp_path)
    other, broker, proc = make(data_root=str(tmp_path), lease_refresh_sec=0.1)
    other.run_once(0)
    claim = other.leases.claims.claim

    def answered_meanwhile(path: str, request: str) -> Any:
        first_proc.gate.set()
        first_broker.refuse_connect = False
        spin(first, lambda: not first.runs)  # A's outcome is confirmed: its done file is there, its lease gone
        return claim(path, request)

    monkeypatch.setattr(other.leases.claims, "claim", answered_meanwhile)
    broker.publish(QUEUE, run, REDELIVERED)
    spin(other, lambda: broker.acked or bodies(broker, "/queue/STARTED"))
    assert not bodies(broker, "/queue/STARTED"), "B ran a run A had answered"
    settle_down(other)
    assert proc.ran == [] and not bodies(broker, "/queue/DONE")
    assert first_proc.ran == ["1"] and len(bodies(first_broker, "/queue/DONE")) == 1
    lease = os.path.join(str(tmp_path), "SNS", "CNCS", "IPTS-1", "shared", "autoreduce", "reduction_log")
    assert not [name for name in os.listdir(lease) if name.endswith(".lease")], "B left its claim behind"


def test_a_repeat_sent_after_an_answer_whose_ack_was_lost_runs(tmp_path):
    """Promise 5 (the short fault harness in CI, RabbitMQ seed 384911: 1 lost).  Run 1 was
    answered, and no ACK of its message was confirmed (the agent that acked it lost the receipt
    with its connection), so its done file stayed: the message may still come back.  The same
    body sent again later, stamped by the broker after that answer, is a new request: it runs.
    (A copy stamped before the answer is the answered message, settled from the file: see
    answered_elsewhere_then_a_repeat_runs.)"""
    run, first, first_broker, first_proc = claimant_cut_off(tmp_path)
    first_proc.gate.set()
    first_broker.refuse_connect = False
    spin(first, lambda: not first.runs)
    assert bodies(first_broker, "/queue/DONE")
    answered_ms = int(time.time() * 1000)
    other, broker, proc = make(data_root=str(tmp_path))
    proc.gate.set()
    other.run_once(0)
    broker.publish(QUEUE, run, {"timestamp": str(answered_ms + 30000)})
    spin(other, lambda: broker.acked)
    assert proc.ran == ["1"], "a request sent after the answer was taken for the answered message"
    assert len(bodies(broker, "/queue/DONE")) == 1


def test_a_repeat_sent_after_an_answer_whose_ack_receipt_was_lost_runs_on_the_same_agent():
    """Promise 5, the journal's side of seed 384911: the agent answered run 1 and its ACK left,
    but the connection dropped before the receipt, so its journal keeps the run "maybe not
    acked".  The broker had the ACK: the message is gone.  The same body sent again later,
    stamped after the answer, is a new request and runs; it is not taken for the old message."""
    agent, transport, proc = make()
    proc.gate.set()
    agent.run_once(0)
    transport.lose_acks = True
    transport.publish(QUEUE, body(n="1"))
    spin(agent, lambda: bodies(transport, "/queue/DONE") and not agent.runs)
    transport.drop_connection("cut after the ACK left")
    transport.queues[QUEUE].clear()  # the broker had the ACK
    transport.lose_acks = False
    spin(agent, lambda: agent.connected)
    transport.publish(QUEUE, body(n="1"), {"timestamp": str(int((time.time() + 30) * 1000))})
    spin(agent, lambda: transport.acked)
    settle_down(agent)
    assert proc.ran == ["1", "1"], "a request sent after the answer was taken for the answered message"
    assert len(bodies(transport, "/queue/DONE")) == 2


def test_a_redelivered_repeat_that_another_agent_claimed_is_no_lost_ack(tmp_path):
    """Promise 1 (fault harness, RabbitMQ seed 853267): A's ACK of run 1 was confirmed just before
    the broker died.  Later the repeat of run 1 is claimed by B, B dies, and its copy comes to A
    marked redelivered.  The claim B made after A's ACK shows it is not A's forgotten message."""
    run = body(n="1", inst="CNCS", ipts="IPTS-1", data_file="/SNS/CNCS/IPTS-1/nexus/CNCS_1.nxs.h5")
    first, broker, first_proc = make(data_root=str(tmp_path), lease_refresh_sec=0.1)
    broker.forgets_confirmed_acks = True
    first_proc.gate.set()
    first.run_once(0)
    broker.publish(QUEUE, run)
    spin(first, lambda: broker.acked and not first.runs)
    settle_down(first)
    broker.drop_connection("broker SIGKILLed")
    spin(first, lambda: first.connected)
    time.sleep(0.05)

    other, other_broker, other_proc = make(data_root=str(tmp_path))
    other.run_once(0)
    other_broker.publish(QUEUE, run)
    spin(other, lambda: bodies(other_broker, "/queue/STARTED"))

    broker.publish(QUEUE, run, REDELIVERED)
    spin(first, lambda: first.runs.in_state(RunState.HELD), timeout=5)
    assert len(broker.acked) == 1, "the repeat was taken for the forgotten ACK and acked without running"
    other_proc.gate.set()
    spin(first, lambda: step(other) and len(broker.acked) == 2)
    assert bodies(other_broker, "/queue/DONE") and other_proc.ran == ["1"]


def test_a_run_whose_ack_rabbitmq_forgot_is_not_run_again_by_another_agent(tmp_path):
    """Promise 4 (fault harness in CI, RabbitMQ seed 249649): A answered and acked run 1 a moment
    before RabbitMQ was SIGKILLed; the broker forgot the ACK and gave the message, redelivered,
    to B.  B sees A's settled claim from just before its own connection dropped: no second run."""
    run, other, broker, proc = acked_elsewhere_then_the_broker_died(tmp_path)
    answered_elsewhere_then_a_repeat_runs(other, broker, proc, run)


@IDS
def test_a_cancel_meeting_a_waiting_copy_of_a_run_answered_elsewhere_settles_it_from_that_answer(
        tmp_path, fresh_ids):
    """Promise 3 (fault harness, RabbitMQ seed 496): A answered the run, then lost its connection
    before its ACK; the broker gave the run to B, where it waited for a slot when a cancel came.
    B must not answer "cancelled" beside A's outcome: it settles the copy from A's answer."""
    run = CLAIMED_RUN
    first, first_broker, first_proc = make(data_root=str(tmp_path))
    first_proc.gate.set()
    first.run_once(0)
    first_broker.lose_acks = True
    first_broker.publish(QUEUE, run)
    spin(first, lambda: bodies(first_broker, "/queue/DONE") and not first.runs)

    other, broker, proc = make(data_root=str(tmp_path), max_procs=2, jobs_per_instrument=1)
    broker.fresh_ids = fresh_ids
    other.run_once(0)
    broker.publish(QUEUE, body(n="x", inst="CNCS"))
    spin(other, lambda: bodies(broker, "/queue/STARTED"))
    broker.publish(QUEUE, run, REDELIVERED)
    spin(other, lambda: other.runs.in_state(RunState.WAITING))
    broker.topic(FANOUT, body(cancel=True, instrument="CNCS", run_number="1"))
    spin(other, lambda: len(broker.acked) == 1)
    proc.gate.set()
    spin(other, lambda: len(broker.acked) == 2)
    settle_down(other)
    error = other.config.destination("postprocess_error")
    assert not bodies(broker, error), "B answered a run A had answered"
    assert proc.ran == ["x"] and len(bodies(first_broker, "/queue/DONE")) == 1



def test_a_standing_cancel_meeting_a_copy_of_a_run_answered_elsewhere_settles_it_from_that_answer(tmp_path):
    """Promise 3, on arrival: A answered the run long before a cancel for it (its ACK lost); the
    cancel stands at B when the broker gives B the un-acked copy.  B settles it from A's answer."""
    first, first_broker, first_proc = make(data_root=str(tmp_path))
    first_proc.gate.set()
    first.run_once(0)
    first_broker.lose_acks = True
    first_broker.publish(QUEUE, CLAIMED_RUN)
    spin(first, lambda: bodies(first_broker, "/queue/DONE") and not first.runs)
    time.sleep(0.3)

    other, broker, proc = make(data_root=str(tmp_path), cancel_window_sec=0.2)
    other.run_once(0)
    broker.topic(FANOUT, body(cancel=True, instrument="CNCS", run_number="1"))
    other.run_once(0.05)
    broker.publish(QUEUE, CLAIMED_RUN, REDELIVERED)
    spin(other, lambda: broker.acked)
    settle_down(other)
    assert not bodies(broker, other.config.destination("postprocess_error")), "B answered a run A had answered"
    assert proc.ran == [] and first_proc.ran == ["1"]


@pytest.mark.parametrize("kind, headers, expected", [
    ("activemq", {"timestamp": "1796584236530"}, 1796584236530),
    ("artemis", {"timestamp": "1796584236530", "timestamp_in_ms": "5"}, 1796584236530),
    ("rabbitmq", {"timestamp": "1796584236", "timestamp_in_ms": "1796584236530"}, 1796584236530),
    ("rabbitmq", {"timestamp": "1796584236530"}, None),
    ("activemq", {"timestamp": "soon"}, None),
])
def test_the_broker_time_is_read_from_the_header_each_broker_stamps(kind, headers, expected):
    """RabbitMQ's interceptor puts seconds in ``timestamp`` and ms in ``timestamp_in_ms``; on
    ActiveMQ Classic and Artemis a producer's ``timestamp_in_ms`` is only a property, and on
    RabbitMQ without the interceptor a producer's ``timestamp`` is not the broker's time."""
    assert broker_time(kind, headers) == expected


def test_a_waiting_run_cancelled_here_is_not_run_or_answered_again_elsewhere(tmp_path):
    """Promises 3 and 4 (fault harness, RabbitMQ seed 824902): A answered a cancel for a run
    that waited for a slot, and its ACK was lost; the broker gave the run to B.  B must settle
    it from A's answer: neither run it nor answer it again."""
    first, first_broker, first_proc = make(data_root=str(tmp_path), max_procs=2, jobs_per_instrument=1)
    first.run_once(0)
    first_broker.publish(QUEUE, body(n="x", inst="CNCS"))
    spin(first, lambda: bodies(first_broker, "/queue/STARTED"))
    first_broker.publish(QUEUE, CLAIMED_RUN)
    spin(first, lambda: first.runs.in_state(RunState.WAITING))
    first_broker.lose_acks = True
    first_broker.topic(FANOUT, body(cancel=True, instrument="CNCS", run_number="1"))
    error = first.config.destination("postprocess_error")
    spin(first, lambda: bodies(first_broker, error) and len(first.runs) == 1)
    settle_down(first)

    other, broker, proc = make(data_root=str(tmp_path))
    proc.gate.set()
    other.run_once(0)
    broker.publish(QUEUE, CLAIMED_RUN, REDELIVERED)
    spin(other, lambda: broker.acked)
    settle_down(other)
    assert proc.ran == [] and not bodies(broker, "/queue/DONE"), "B ran a run A had answered"
    assert not bodies(broker, error), "B answered it again"
    assert len(bodies(first_broker, error)) == 1 and first_proc.ran == []


def test_a_claim_stays_fresh_while_its_outcome_waits_for_the_broker(tmp_path):
    """Promises 2 and 3: A's job ended while A was cut off from the broker, so its outcome waits
    to be sent; the broker gave the run to B.  A's claim must stay fresh meanwhile: B holds the
    copy for A's answer instead of taking a stale claim over and running the job again."""
    _run, first, first_broker, first_proc = claimant_cut_off(tmp_path, lease_stale_sec=0.6)
    first_proc.gate.set()
    spin(first, lambda: first.runs.in_state(RunState.FINISHING))

    other, broker, proc = make(data_root=str(tmp_path), lease_refresh_sec=0.1, lease_stale_sec=0.6)
    proc.gate.set()
    other.run_once(0)
    broker.publish(QUEUE, CLAIMED_RUN, REDELIVERED)
    spin(other, lambda: other.runs.in_state(RunState.HELD))
    until = time.monotonic() + 2.0
    while time.monotonic() < until:
        step(first, other)
    assert proc.ran == [], "B took over the claim of a run whose outcome A still holds"
    first_broker.refuse_connect = False
    spin(first, lambda: step(first, other) and bool(bodies(first_broker, "/queue/DONE")) and broker.acked)
    settle_down(other)
    assert proc.ran == [] and not bodies(broker, "/queue/DONE") and first_proc.ran == ["1"]


def test_a_later_request_redelivered_after_a_forgotten_ack_runs(tmp_path):
    """Promise 1 (fault harness in CI, RabbitMQ seed 533601): A answered and acked run 1 just
    before the broker's SIGKILL.  Half a minute later the run's next request, held by an agent
    that was then partitioned, comes to B redelivered (here without waiting the half minute: the
    broker's stamp says it).  The broker stamped it long after that ACK, so it is not the message
    whose ACK the broker forgot: it runs."""
    run, other, broker, proc = acked_elsewhere_then_the_broker_died(tmp_path)
    stamped_later = str(int((time.time() + 30) * 1000))
    broker.publish(QUEUE, run, {"redelivered": "true", "timestamp": stamped_later})
    spin(other, lambda: broker.acked)
    assert proc.ran == ["1"], "a later request was taken for a forgotten ACK"
    assert len(bodies(broker, "/queue/DONE")) == 1


def test_a_restarted_agent_releases_the_claims_of_its_crashed_predecessor(tmp_path):
    """Promise 1 without a minute's stall (fault harness, agents on hosts of their own): A, on
    host a, was running run 1 when it was killed; the broker gave the run to B on host b, which
    holds it for A's claim (b cannot see a's processes).  A's agent, restarted on host a with
    A's journal, finds that claim's process dead and releases it: B runs the run at once, not
    after ``lease_stale_sec``."""
    data, journal = str(tmp_path), str(tmp_path / "a.journal")
    first, first_broker, first_proc = make(journal=journal, hostname="a", data_root=data)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    first.leases.claims.pid = gone.pid  # A's process: dead once the test is done with it
    first.run_once(0)
    first_broker.publish(QUEUE, CLAIMED_RUN)
    spin(first, lambda: bodies(first_broker, "/queue/STARTED"))

    other, broker, proc = make(hostname="b", data_root=data, lease_refresh_sec=0.1, lease_stale_sec=60)
    proc.gate.set()
    other.run_once(0)
    broker.publish(QUEUE, CLAIMED_RUN, REDELIVERED)
    spin(other, lambda: other.runs.in_state(RunState.HELD))
    settle_down(other)
    assert proc.ran == [], "B ran a run whose claimant it cannot tell dead"
    make(journal=journal, hostname="a", data_root=data)
    spin(other, lambda: bodies(broker, "/queue/DONE") and broker.acked)
    assert proc.ran == ["1"]
    first_proc.gate.set()
