"""The fault harness's checks, on made-up histories: each can fail, and a clean history passes."""

from tests.support.chaos.fleet import Execution
from tests.support.chaos.invariants import Fault, Request, check

DEST = {"/queue/C": "reduction_complete", "/queue/E": "reduction_error", "/queue/S": "reduction_started"}
HOSTS = ["h1", "h2"]


def run_check(requests, outcomes, executions, faults=(), window=(0.0, 100.0)):
    return check(requests, outcomes, DEST, executions, list(faults), HOSTS, max_procs=2, settle=5.0,
                 stall_sec=6.0, window=window)


def done(run, when, dest="/queue/C", error="", host="h1"):
    return (when, dest, {"run_number": str(run), "error": error, "information": host})


def test_a_clean_history_passes():
    requests = [Request(1, 1, "short", 0.0, 1), Request(2, 1, "short", 10.0, 2)]
    executions = [Execution("h1", 10, 1, 1.0, 3.0, "ok"), Execution("h2", 11, 1, 11.0, 12.0, "ok")]
    figures = run_check(requests, [done(1, 3.5), done(1, 12.5)], executions, window=(0.0, 13.0))
    assert figures.violations() == {}
    assert figures.drain_sec is None, "no faults, nothing to drain after"


def test_each_violation_is_counted():
    requests = [
        Request(1, 1, "long", 0.0, 1),                       # two overlapping executions, answered twice
        Request(2, 2, "short", 0.0, 1),                      # never answered
        Request(3, 3, "short", 0.0, 1),                      # runs again after its outcome
        Request(4, 4, "short", 0.0, 1, cancels=[2.0]),       # cancelled, then...
        Request(5, 4, "short", 5.0, 2),                      # ...re-requested: answered cancelled, never run
    ]
    executions = [
        Execution("h1", 10, 1, 1.0, 9.0, "ok"), Execution("h2", 11, 1, 4.0, 9.5, "ok"),
        Execution("h1", 12, 3, 1.0, 2.0, "ok"), Execution("h2", 13, 3, 3.0, 4.0, "ok"),
        Execution("h1", 14, 4, 1.0, 2.0, "terminated"),
    ]
    outcomes = [done(1, 9.1), done(1, 9.6), done(3, 2.1), done(3, 4.1),
                done(4, 2.2, "/queue/E", "REDUCTION: cancelled"), done(4, 5.5, "/queue/E", "REDUCTION: cancelled")]
    figures = run_check(requests, outcomes, executions, window=(0.0, 10.0))
    assert figures.violations() == {"lost": 1, "overlapping": 1, "duplicate_outcomes": 2, "repeated_after_confirm": 1,
                                    "rerequests_not_run": 1, "cancels_silencing": 1,
                                    "busy_stalls": 1}, "run 2 also waited 10 s with slots free"


def test_a_request_waiting_while_a_calm_host_has_a_free_slot_is_a_busy_stall():
    requests = [Request(1, 1, "short", 0.0, 1)]
    executions = [Execution("h1", 10, 1, 20.0, 21.0, "ok")]
    figures = run_check(requests, [done(1, 21.5)], executions, window=(0.0, 22.0))
    assert figures.busy_stalls == 1 and figures.longest_stall_sec >= 18.0


def test_no_busy_stall_while_a_fault_is_near():
    requests = [Request(1, 1, "short", 0.0, 1)]
    executions = [Execution("h1", 10, 1, 20.0, 21.0, "ok")]
    faults = [Fault("broker_kill", "", 0.0, 15.0)]
    figures = run_check(requests, [done(1, 21.5)], executions, faults, window=(0.0, 22.0))
    assert figures.busy_stalls == 0
    assert figures.drain_sec == 21.5 - 15.0


def test_an_outcome_copied_around_a_broker_kill_is_counted_apart():
    """The same outcome twice with a broker kill between the job's end and the second copy is the
    lost-receipt re-send; twice with no kill near, or two different outcomes, is a duplicate."""
    def requests():
        return [Request(1, 1, "short", 0.0, 1), Request(2, 2, "short", 0.0, 1)]

    executions = [Execution("h1", 10, 1, 1.0, 2.0, "ok"), Execution("h1", 11, 2, 1.0, 2.0, "ok")]
    outcomes = [done(1, 2.1), done(1, 6.0), done(2, 2.1), done(2, 2.2)]
    kill = [Fault("broker_kill", "", 2.5, 4.0)]
    figures = run_check(requests(), outcomes, executions, kill, window=(0.0, 10.0))
    assert figures.resent_after_lost_receipt == 1
    assert figures.duplicate_outcomes == 1, "run 2's copies both came before the kill"
    figures = run_check(requests(), outcomes, executions, window=(0.0, 10.0))
    assert (figures.resent_after_lost_receipt, figures.duplicate_outcomes) == (0, 2)


def test_an_outcome_copied_around_a_cut_connection_is_counted_apart():
    """ActiveMQ seed 636275: a slow link starved the heartbeats just after a job's outcome left; the
    agent reconnected and sent it again.  A slow link, or a partition of the host that ran the job,
    near the second copy is that re-send; a partition of another host, or two executions, is not."""
    executions = [Execution("h1", 10, 1, 1.0, 2.0, "ok")]
    outcomes = [done(1, 2.1), done(1, 2.6)]
    for fault, resent in ((Fault("slow", "", 0.5, 2.2), 1), (Fault("partition", "h1", 2.0, 9.0), 1),
                          (Fault("partition", "h2", 2.0, 9.0), 0), (Fault("slow", "", 3.0, 9.0), 0)):
        figures = run_check([Request(1, 1, "short", 0.0, 1)], outcomes, executions, [fault], window=(0.0, 10.0))
        assert (figures.resent_after_lost_receipt, figures.duplicate_outcomes) == (resent, 1 - resent), fault
    twice = executions + [Execution("h2", 11, 1, 1.5, 2.0, "ok")]
    figures = run_check([Request(1, 1, "short", 0.0, 1)], outcomes, twice, [Fault("slow", "", 0.5, 2.2)],
                        window=(0.0, 10.0))
    assert figures.duplicate_outcomes == 1


def test_the_same_outcome_from_another_agent_around_a_fault_is_a_duplicate():
    """RabbitMQ seed 824902: h1 ran the job and answered; around a broker kill h2, holding a copy,
    took h1's claim over and answered it again.  Only the agent that ran the job re-sends."""
    executions = [Execution("h1", 10, 1, 1.0, 2.0, "ok")]
    kill = [Fault("broker_kill", "", 2.5, 4.0)]
    for second, resent in (("h1", 1), ("h2", 0)):
        outcomes = [done(1, 2.1), done(1, 6.0, host=second)]
        figures = run_check([Request(1, 1, "short", 0.0, 1)], outcomes, executions, kill, window=(0.0, 10.0))
        assert (figures.resent_after_lost_receipt, figures.duplicate_outcomes) == (resent, 1 - resent), second
