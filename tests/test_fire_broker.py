"""Broker faults: failover and failback, broker restarts, outcomes held while the broker is away."""

import collections
import os
import re
import time

import psutil
import pytest

from tests.conftest import collector
from tests.support.client import distinct
from tests.test_agent_e2e import timed_script

pytestmark = [pytest.mark.broker, pytest.mark.fire]

OUTCOMES = ("reduction_started", "reduction_complete", "reduction_error", "postprocess_error")
NAMES = {"activemq": "ActiveMQ Classic", "artemis": "Artemis", "rabbitmq": "RabbitMQ"}


def watch(broker, agent):
    c = collector(broker)
    c.subscribe(*(agent.q(k) for k in OUTCOMES))
    return c


def row(name, broker):
    """Reliability rows are per broker kind; ActiveMQ Classic keeps the plain name."""
    return name if broker.kind == "activemq" else "%s_%s" % (name, broker.kind)


def counts(collectors, agent, key):
    """Run number -> how many ``key`` messages were sent for it, over all collectors."""
    return collections.Counter(m["run_number"] for m in distinct(collectors, agent.q(key)))


def executions(agent):
    """Run number -> how many times the agent started its job (from the agent's log)."""
    return collections.Counter(re.findall(r"\[CNCS (\d+)\] starting reduction job", agent.log()))


def assert_sent_once(broker, agent, duplicates, outcomes):
    """Each run executed once.  A broker SIGKILL between storing an outcome and sending its receipt
    makes the agent send it again: Artemis drops that copy (_AMQ_DUPL_ID); ActiveMQ Classic and
    RabbitMQ cannot (docs/delivery.md, "Limits"), so there it may stand, at most one per slot."""
    ran = executions(agent)
    assert set(ran.values()) == {1}, "a run executed twice: %r" % ran
    assert duplicates == 0 if broker.kind == "artemis" else duplicates <= 4, outcomes


def wait_for_runs(collectors, agent, runs, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(counts(collectors, agent, "reduction_complete")) >= runs:
            return
        time.sleep(0.2)
    missing = runs - set(counts(collectors, agent, "reduction_complete"))
    raise AssertionError("runs never completed: %s" % sorted(missing))


def test_failover_to_the_second_broker_and_back(make_agent, facility, private_broker, reliability_rows):
    first = private_broker("first")
    second = private_broker("second")
    try:
        facility.script("CNCS", timed_script(1.0))
        agent = make_agent(on=first, max_procs=2, jobs_per_instrument=0, failback_interval_sec=2,
                           brokers=[["127.0.0.1", first.port], ["127.0.0.1", second.port]]).start()
        on_first = watch(first, agent)
        on_second = watch(second, agent)
        for run in range(1, 11):
            on_first.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
        on_first.wait(agent.q("reduction_complete"), 2, timeout=30)
        first.kill()
        agent.wait_log("connected to broker 127.0.0.1:%d" % second.port, timeout=30)
        for run in range(101, 107):
            on_second.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-2", run))
        on_second.wait(agent.q("reduction_complete"), 6, timeout=60)
        first.start()
        on_first.reconnect()
        agent.wait_log("failing back", timeout=60)
        everything = {str(r) for r in range(1, 11)} | {str(r) for r in range(101, 107)}
        wait_for_runs([on_first, on_second], agent, everything)
        complete = counts([on_first, on_second], agent, "reduction_complete")
        duplicates = sum(n - 1 for n in complete.values())
        assert not counts([on_first, on_second], agent, "reduction_error")
        assert_sent_once(first, agent, duplicates, complete)
        reliability_rows.record(
            row("failover_and_failback", first),
            "two %s brokers; 10 one-second runs sent to the first, which was SIGKILLed after 2 completed; "
            "6 runs sent to the second; the first restarted" % NAMES[first.kind],
            "16 of 16 runs completed, %d duplicate COMPLETEs; agent failed back to the first broker" % duplicates)
        on_first.close()
        on_second.close()
    finally:
        first.kill()
        second.kill()


def test_broker_restart_mid_burst(make_agent, facility, private_broker, reliability_rows):
    broker = private_broker()
    try:
        facility.script("CNCS", timed_script(1.0))
        agent = make_agent(on=broker, max_procs=4, jobs_per_instrument=0).start()
        watcher = watch(broker, agent)
        for run in range(1, 21):
            watcher.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
        watcher.wait(agent.q("reduction_complete"), 4, timeout=30)
        broker.kill()
        time.sleep(1.5)
        broker.start()
        watcher.reconnect()
        wait_for_runs([watcher], agent, {str(r) for r in range(1, 21)})
        time.sleep(1.0)
        started = counts([watcher], agent, "reduction_started")
        complete = counts([watcher], agent, "reduction_complete")
        dup_started = sum(n - 1 for n in started.values())
        dup_complete = sum(n - 1 for n in complete.values())
        assert not counts([watcher], agent, "reduction_error")
        assert_sent_once(broker, agent, dup_started + dup_complete, (started, complete))
        reliability_rows.record(
            row("broker_restart", broker),
            "20 one-second runs at max_procs 4; %s SIGKILLed after 4 completed, restarted 1.5 s later"
            % NAMES[broker.kind],
            "20 of 20 runs completed; %d duplicate STARTED, %d duplicate COMPLETE" % (dup_started, dup_complete))
        watcher.close()
    finally:
        broker.kill()


def test_an_outcome_finished_while_the_broker_is_down_is_sent_after_reconnect(
        make_agent, facility, private_broker, reliability_rows):
    broker = private_broker()
    try:
        facility.script("CNCS", """
            import os, sys, time
            open(sys.argv[2] + "ran", "a").write("x")
            time.sleep(2)
        """)
        agent = make_agent(on=broker, reconnect_initial_sec=1, reconnect_max_sec=1).start()
        watcher = watch(broker, agent)
        watcher.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
        watcher.wait(agent.q("reduction_started"))
        broker.kill()
        agent.wait_log("[CNCS 1] outcome -> ", timeout=20)
        time.sleep(1.0)
        assert agent.log().count("lost broker connection") == 1
        broker.start()
        watcher.reconnect()
        complete = watcher.wait(agent.q("reduction_complete"), timeout=30)
        assert [m["run_number"] for m in complete] == ["1"]
        # the outcome, and STARTED too when the broker died before its receipt left
        agent.wait_log(" unconfirmed messages", timeout=10)
        assert re.search(r"re-sending [12] unconfirmed messages", agent.log())
        time.sleep(2.0)
        out = facility.output_dir("CNCS", "IPTS-1")
        assert open(os.path.join(out, "ran")).read() == "x", "the run was run again"
        assert len(watcher.get(agent.q("reduction_complete"))) == 1
        reliability_rows.record(
            row("outcome_held_while_disconnected", broker),
            "a 2 s run; %s SIGKILLed while it ran and restarted after it finished" % NAMES[broker.kind],
            "COMPLETE delivered once after the reconnect; the script ran once; the run was acked then")
        watcher.close()
    finally:
        broker.kill()


def test_heartbeats_resume_after_reconnects_with_no_thread_growth(make_agent, private_broker, reliability_rows):
    broker = private_broker()
    try:
        agent = make_agent(on=broker, heartbeat_interval_sec=0.5).start()
        watcher = watch(broker, agent)
        watcher.subscribe(agent.q("heart_beat"))
        watcher.wait(agent.q("heart_beat"), 2, timeout=10)
        threads_before = psutil.Process(agent.pid).num_threads()
        for cycle in range(3):
            broker.kill()
            time.sleep(0.5)
            broker.start()
            agent.wait_log("connected to broker", count=cycle + 2, timeout=30)
        watcher.reconnect()
        time.sleep(0.3)
        before = len(watcher.get(agent.q("heart_beat")))
        time.sleep(2.2)
        beats = len(watcher.get(agent.q("heart_beat"))) - before
        threads_after = psutil.Process(agent.pid).num_threads()
        assert 3 <= beats <= 6, "expected a heartbeat every 0.5 s from one sender, got %d in 2.2 s" % beats
        assert threads_after <= threads_before, (threads_before, threads_after)
        reliability_rows.record(
            row("heartbeat_after_reconnect", broker),
            "heartbeat every 0.5 s; %s SIGKILLed and restarted 3 times" % NAMES[broker.kind],
            "%d heartbeats in 2.2 s after the last reconnect; agent threads %d before, %d after"
            % (beats, threads_before, threads_after))
        watcher.close()
    finally:
        broker.kill()
