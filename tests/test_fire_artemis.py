"""Artemis as SNS runs it: a shared-store HA pair, and what only Artemis does."""

import time

import pytest

from postprocessing.devtools import artemis
from tests.conftest import start_artemis
from tests.test_agent_e2e import timed_script
from tests.test_fire_broker import counts, wait_for_runs, watch

pytestmark = [pytest.mark.broker, pytest.mark.fire, pytest.mark.artemis_only]


def test_ha_pair_fails_over_mid_burst(broker, make_agent, facility, tmp_path, reliability_rows):
    """Primary and backup share one journal; the primary is SIGKILLed with runs running and queued."""
    store = str(tmp_path / "store")
    primary = start_artemis(str(tmp_path / "primary"), store=store)
    backup = artemis.LocalArtemis(str(tmp_path / "backup"), store=store, role="backup")
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
