"""The agent's loop on the in-memory transport: settlement, hoarding, disconnects, stops."""

import json

from postprocessing.agent.metrics import MetricsObserver
from postprocessing.agent.runs import RunState
from tests.support.memagent import QUEUE, bodies, make, spin


def test_outcome_before_ack_and_ack_exactly_once():
    agent, transport, proc = make()
    proc.gate.set()
    agent.run_once(0)
    msg = transport.publish(QUEUE, json.dumps({"n": "1"}).encode())
    spin(agent, lambda: transport.acked)
    assert transport.acked == [msg]
    assert [b["n"] for b in bodies(transport, "/queue/DONE")] == ["1"]
    assert bodies(transport, "/queue/DONE")[0]["information"] == "host"
    sent = [d for d, _b, _h in transport.sent]
    assert sent.index("/queue/STARTED") < sent.index("/queue/DONE")
    assert all(h["persistent"] == "true" for d, _b, h in transport.sent if d.startswith("/queue/"))


def test_invalid_message_gets_error_then_ack():
    agent, transport, _proc = make()
    agent.run_once(0)
    msg = transport.publish(QUEUE, b'{"no_n": 1}')
    spin(agent, lambda: transport.acked)
    errors = bodies(transport, "/queue/POSTPROCESS.ERROR")
    assert errors[0]["error"] == "N is missing" and transport.acked == [msg]


def test_full_agent_holds_nothing_it_cannot_run():
    agent, transport, proc = make(max_procs=2)
    agent.run_once(0)
    for n in range(5):
        transport.publish(QUEUE, json.dumps({"n": str(n)}).encode())
    spin(agent, lambda: len(bodies(transport, "/queue/STARTED")) == 2)
    for _ in range(20):
        agent.run_once(0.01)
    assert len(transport.queues[QUEUE]) == 3, "a full agent took more messages than it runs"
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 5)
    assert sorted(proc.ran) == ["0", "1", "2", "3", "4"]


def test_waiting_for_an_instrument_does_not_block_others():
    agent, transport, proc = make(max_procs=3, jobs_per_instrument=1)
    agent.run_once(0)
    for n, inst in enumerate(["A", "A", "A", "B"]):
        transport.publish(QUEUE, json.dumps({"n": str(n), "inst": inst}).encode())
    spin(agent, lambda: len(bodies(transport, "/queue/STARTED")) == 2)
    started = {b["n"] for b in bodies(transport, "/queue/STARTED")}
    assert started == {"0", "3"}
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 4)


def test_outcome_finished_while_disconnected_is_sent_after_reconnect():
    agent, transport, proc = make()
    agent.run_once(0)
    msg = transport.publish(QUEUE, b'{"n": "7"}')
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.drop_connection("broker died")
    transport.refuse_connect = True
    agent.run_once(0.05)
    proc.gate.set()
    spin(agent, lambda: agent.outbox and not agent.connected and not agent.runs.count(
        RunState.RUNNING))
    assert not bodies(transport, "/queue/DONE"), "sent while disconnected?"
    transport.refuse_connect = False
    spin(agent, lambda: transport.acked)
    assert transport.acked == [msg]
    assert proc.ran == ["7"], "the redelivered run was run again"
    assert len(bodies(transport, "/queue/DONE")) == 1


def test_runs_settled_on_a_lost_connection_free_their_slots_on_the_new_one():
    """Failover: runs from the dead broker finish on the backup; their slots must take new work."""
    agent, transport, proc = make(max_procs=2)
    agent.run_once(0)
    for n in ("1", "2"):
        transport.publish(QUEUE, json.dumps({"n": n}).encode())
    spin(agent, lambda: len(bodies(transport, "/queue/STARTED")) == 2)
    transport.drop_connection("first broker died")
    transport.queues[QUEUE].clear()  # the dead broker keeps them; the backup never had them
    transport.refuse_connect = True
    proc.gate.set()
    spin(agent, lambda: len(agent.outbox) == 2 and not agent.connected)
    transport.refuse_connect = False
    fresh = transport.publish(QUEUE, b'{"n": "3"}')
    spin(agent, lambda: fresh in transport.acked)
    assert sorted(proc.ran) == ["1", "2", "3"]


def test_redelivery_with_a_new_message_id_rejoins_its_job():
    """RabbitMQ gives a redelivered message a new id: it must still not run twice (and is counted)."""
    agent, transport, proc = make()
    metrics = MetricsObserver(agent.config)
    agent.observer = metrics
    transport.fresh_ids = True
    agent.run_once(0)
    transport.publish(QUEUE, b'{"n": "8"}')
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    transport.drop_connection("consumer timeout")
    spin(agent, lambda: agent.connected and len(agent.runs) == 1 and any(
        r.delivery.epoch == transport.epoch for r in agent.runs))
    proc.gate.set()
    spin(agent, lambda: transport.acked)
    assert proc.ran == ["8"] and len(transport.acked) == 1
    assert len(bodies(transport, "/queue/DONE")) == 1
    assert metrics.registry.get_sample_value("postprocessing_duplicate_deliveries_total", {"how": "rejoined"}) == 1
    assert not transport.queues[QUEUE]


def test_stop_gives_back_waiting_runs_and_finishes_running_ones():
    agent, transport, proc = make(max_procs=1, shutdown_timeout_sec=5)
    agent.run_once(0)
    for n in range(3):
        transport.publish(QUEUE, json.dumps({"n": str(n)}).encode())
    spin(agent, lambda: bodies(transport, "/queue/STARTED"))
    agent.request_stop("test")
    for _ in range(10):
        agent.run_once(0.01)
    proc.gate.set()
    finished = []
    spin(agent, lambda: finished.append(agent.run_once(0.02)) or finished[-1])
    assert proc.ran == ["0"] and len(transport.acked) == 1
    assert len(transport.queues[QUEUE]) == 2


def test_ping_reply_and_heartbeat():
    agent, transport, _proc = make()
    agent.run_once(0)
    heartbeats = bodies(transport, "/topic/SNS.COMMON.STATUS.AUTOREDUCE.0")
    assert heartbeats == [{"src_name": "host", "role": "postprocessing", "status": "0", "pid": str(agent.pid)}]
    transport.topic("/topic/SNS.COMMON.STATUS.PING", b'{"reply_to": "/queue/PONG", "x": 1}')
    agent.run_once(0.05)
    reply = bodies(transport, "/queue/PONG")[0]
    assert reply["x"] == 1 and reply["src_name"] == "host" and reply["running_jobs"] == 0
