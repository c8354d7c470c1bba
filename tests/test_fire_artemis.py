"""Artemis as SNS runs it: a shared-store HA pair, and what only Artemis does."""

import json
import os
import time

import pytest

from postprocessing.devtools import artemis
from tests.conftest import collector, start_artemis
from tests.support.cli import broker_config, run_cli, write_config
from tests.support.tcpproxy import TcpProxy
from tests.test_agent_e2e import timed_script
from tests.test_fire_broker import counts, wait_for_runs, watch

pytestmark = [pytest.mark.broker, pytest.mark.fire, pytest.mark.artemis_only]


def test_ha_pair_fails_over_mid_burst(broker, make_agent, facility, tmp_path, reliability_rows):
    """Primary and backup share one journal; the primary is SIGKILLed with runs running and queued."""
    store = str(tmp_path / "store")
    primary = start_artemis(str(tmp_path / "primary"), store=store, journal_sync=True)
    backup = artemis.LocalArtemis(str(tmp_path / "backup"), store=store, role="backup", journal_sync=True)
    try:
        backup.start(wait=False)
        backup.wait_log("waiting for primary to fail before activating", timeout=60)
        facility.script("CNCS", timed_script(1.0))
        agent = make_agent(on=primary, max_procs=4, jobs_per_instrument=0,
                           brokers=[["127.0.0.1", primary.port], ["127.0.0.1", backup.port]]).start()
        on_primary = watch(primary, agent)
        runs = {str(r) for r in range(1, 25)}
        for run in sorted(runs, key=int):
            on_primary.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", int(run)))
        on_primary.wait(agent.q("reduction_complete"), 4, timeout=60)
        killed_at = time.monotonic()
        primary.kill()
        backup.wait_ready(timeout=60)
        failover = time.monotonic() - killed_at
        agent.wait_log("connected to broker 127.0.0.1:%d" % backup.port, timeout=60)
        on_backup = watch(backup, agent)
        wait_for_runs([on_primary, on_backup], agent, runs, timeout=120)
        time.sleep(1.5)
        started = counts([on_primary, on_backup], agent, "reduction_started")
        complete = counts([on_primary, on_backup], agent, "reduction_complete")
        dup_started = sum(n - 1 for n in started.values())
        dup_complete = sum(n - 1 for n in complete.values())
        assert not counts([on_primary, on_backup], agent, "reduction_error")
        assert set(complete) == runs
        assert (dup_started, dup_complete) == (0, 0), (started, complete)
        reliability_rows.record(
            "artemis_ha_failover",
            "Artemis shared-store HA pair; 24 one-second runs at max_procs 4 sent to the primary, which was "
            "SIGKILLed after 4 completed",
            "%d of 24 runs completed on the pair, %d duplicate STARTED, %d duplicate COMPLETE; the backup was "
            "live %.1f s after the kill" % (len(complete), dup_started, dup_complete, failover))
        on_primary.close()
        on_backup.close()
    finally:
        primary.kill()
        backup.kill()


def test_ping_reply_addresses_do_not_pile_up(broker, make_agent):
    """Each ``postprocessing ping`` replies on its own topic; Artemis deletes it when the ping ends."""
    agent = make_agent().start()
    for _ in range(3):
        proc = run_cli(agent.config_path, "ping", "--wait", "1", "--expect", "1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    deadline = time.monotonic() + 30
    while True:
        names = broker.addresses()
        replies = [n for n in names if ".REPLY." in n]
        if not replies or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "DLQ" in names
    assert not replies, names


def test_a_run_held_past_max_delivery_attempts_runs_once(broker, make_agent, facility, private_broker, tmp_path,
                                                        reliability_rows):
    """Each dropped connection counts as a delivery attempt: the held run's message ends in DLQ
    while its job runs.  The job is neither stopped nor run again, and it is answered once."""
    own = private_broker(max_delivery_attempts=2)
    link = TcpProxy(own.port)
    facility.script("CNCS", """
        import sys, time
        open(sys.argv[2] + "ran", "a").write("x")
        time.sleep(12)
    """)
    agent = make_agent(on=own, reconnect_initial_sec=0.2, reconnect_max_sec=0.5,
                       brokers=[["127.0.0.1", link.port]]).start()
    watcher = watch(own, agent)
    watcher.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    watcher.wait(agent.q("reduction_started"))
    for cycle in range(3):
        link.cut()
        agent.wait_log("connected to broker", count=cycle + 2, timeout=60)
        time.sleep(0.5)
    complete = watcher.wait(agent.q("reduction_complete"), timeout=60)
    time.sleep(2.0)
    assert [m["run_number"] for m in watcher.get(agent.q("reduction_complete"))] == ["1"]
    assert len(watcher.get(agent.q("reduction_started"))) == 1
    assert open(facility.output_dir("CNCS", "IPTS-1") + "/ran").read() == "x", "the run was run again"
    listing = run_cli(write_config(str(tmp_path / "dlq.conf"), broker_config(own)), "dlq", "list", "--json")
    groups = json.loads(listing.stdout)["groups"]
    assert [(g["original_destination"], g["run"], g["count"]) for g in groups] == [
        (agent.q("reduction_data_ready"), "1", 1)], listing.stdout
    reliability_rows.record(
        "artemis_held_past_max_delivery_attempts",
        "Artemis with max-delivery-attempts 2; one 12 s run; the agent's connection cut 3 times while it ran",
        "the script ran once, 1 STARTED and %d COMPLETE; the answered message was in DLQ" % len(complete))
    watcher.close()


FULL_COMPLETE = ('<address-setting match="*.REDUCTION_COMPLETE"><max-size-messages>1</max-size-messages>'
                 '<address-full-policy>FAIL</address-full-policy></address-setting>')


def test_an_outcome_the_broker_refuses_is_sent_again_and_nothing_is_lost(broker, make_agent, facility,
                                                                       private_broker, reliability_rows):
    """An address that is full (policy FAIL) refuses the second COMPLETE: Artemis answers the SEND
    with an ERROR naming its receipt and closes the connection.  The run stays un-acked, the
    outcome is sent again after a backoff, and once the queue is read both runs are answered once."""
    own = private_broker(address_settings=FULL_COMPLETE)
    facility.script("CNCS", """
        import sys
        open(sys.argv[2] + "ran-" + sys.argv[1].rsplit("_", 1)[1], "a").write("x")
    """)
    agent = make_agent(on=own, max_procs=1).start()
    sender = collector(own)
    for run in (1, 2):
        sender.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    agent.wait_log("refused", timeout=60)
    refusals = agent.log().count("the broker refused")
    watcher = watch(own, agent)
    complete = watcher.wait(agent.q("reduction_complete"), 2, timeout=120)
    time.sleep(2.0)
    assert sorted(m["run_number"] for m in watcher.get(agent.q("reduction_complete"))) == ["1", "2"]
    out = facility.output_dir("CNCS", "IPTS-1")
    assert sorted(name for name in os.listdir(out) if name.startswith("ran-")) == [
        "ran-1.nxs.h5", "ran-2.nxs.h5"]
    assert all(open(os.path.join(out, name)).read() == "x" for name in os.listdir(out) if name.startswith("ran-"))
    assert refusals >= 1
    reliability_rows.record(
        "artemis_refused_outcome",
        "Artemis with a COMPLETE address of one message and policy FAIL; two runs; the queue read only later",
        "%d COMPLETE, each run once; %d refusal(s) before the queue was read, each sent again after a backoff"
        % (len(complete), refusals))
    sender.close()
    watcher.close()
