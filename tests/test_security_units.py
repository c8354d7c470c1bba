"""Issue 11, units: log escaping, spawn failures, validated users, ping policy, paths."""

import logging
import os
import signal
import subprocess
import tempfile

import psutil
import pytest

from postprocessing import logsafe, safefiles
from postprocessing.agent import ping
from postprocessing.agent.heartbeat import ping_reply, reply_destination
from postprocessing.agent.ping import PingPolicy
from postprocessing.errors import JobFailed
from postprocessing.jobs import environment, identity, reaper
from postprocessing.jobs.process import JobProcess
from postprocessing.transport.validated import validated_user


def test_log_text_escapes_every_control_character():
    assert logsafe.text("a\nb\rc\td\x1b[31me\x00f\u2028g\x85") == "a\\nb\\rc\\td\\x1b[31me\\x00f\\u2028g\\x85"
    assert logsafe.text(ValueError("x\ny")) == "x\\ny"
    assert logsafe.arg(3) == 3 and logsafe.arg(2.5) == 2.5
    assert logsafe.arg(["a\n"]) == "['a\\n']"


def test_a_failed_spawn_closes_its_fds_and_names_the_program():
    before = len(os.listdir("/proc/self/fd"))
    with tempfile.TemporaryFile() as out:
        for _ in range(50):
            with pytest.raises(JobFailed, match="cannot start /nonexistent/python9: No such file"):
                JobProcess(["/nonexistent/python9", "x.py"], "/", out, out, {})
    # Two per spawn leaked before; a few may come and go with other threads of the session (broker clients).
    assert len(os.listdir("/proc/self/fd")) - before < 10


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ping_policy_refuses_own_destinations_and_logs_once_a_minute(caplog):
    clock = Clock()
    policy = PingPolicy(["/queue/RUNS", "/topic/PING"], clock)
    assert policy.refusal("/topic/PING") and policy.refusal("/amq/queue/RUNS")
    assert policy.refusal("/topic/PONG") is None
    with caplog.at_level(logging.WARNING, "postprocessing.agent.ping"):
        for _ in range(5):
            policy.log_refusal("mallory\n", "loop")
        policy.log_refusal(None, "loop")
        clock.now += ping.LOG_EVERY_SEC
        policy.log_refusal("mallory\n", "loop")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("ping from mallory\\n not answered: loop")


def test_ping_policy_rate_limits_answers():
    clock = Clock()
    policy = PingPolicy([], clock)
    answered = sum(policy.refusal("/topic/PONG") is None for _ in range(100))
    assert answered == ping.MAX_BURST
    clock.now += 1
    assert sum(policy.refusal("/topic/PONG") is None for _ in range(100)) == ping.RATE_PER_SEC


def test_ping_replies_never_carry_reply_to():
    assert "reply_to" not in ping_reply({"reply_to": "/topic/X", "a": 1}, "host", 1, 0)
    assert reply_destination(b'{"reply_to": "/topic/SNS.>"}', 1000) is None
    assert reply_destination(b'{"reply_to": "/queue/A,/topic/B"}', 1000) is None
    assert reply_destination(b'{"reply_to": "/topic/PONG.1"}', 1000) is not None


def test_open_nofollow_walks_from_the_root_and_judges_each_link(tmp_path):
    root = tmp_path / "root"
    (root / "facility").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    os.symlink(str(tmp_path / "real"), str(root / "facility" / "inst"))
    with safefiles.open_nofollow(str(root / "facility" / "inst" / "a.log"), "w", root=str(root)) as handle:
        handle.write("x")
    assert (tmp_path / "real" / "a.log").read_text() == "x"
    os.chmod(str(root / "facility"), 0o775)
    with pytest.raises(safefiles.UnsafePath, match="facility did not make: .*/facility/inst$"):
        safefiles.open_nofollow(str(root / "facility" / "inst" / "b.log"), "w", root=str(root))
    assert safefiles.check_dir(str(root / "facility" / "inst"), str(root)) is not None
    os.chmod(str(root / "facility"), 0o755)
    safefiles.make_dirs(str(root / "facility" / "inst" / "new" / "deeper"), str(root))
    assert (tmp_path / "real" / "new" / "deeper").is_dir()


def test_open_nofollow_refuses_links_at_the_target_and_hard_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(str(victim), str(tmp_path / "soft.log"))
    with pytest.raises(safefiles.UnsafePath, match="symbolic link"):
        safefiles.open_nofollow(str(tmp_path / "soft.log"), "w", root=str(tmp_path))
    os.link(str(victim), str(tmp_path / "hard.log"))
    with pytest.raises(safefiles.UnsafePath, match="hard links"):
        safefiles.open_nofollow(str(tmp_path / "hard.log"), "w", root=str(tmp_path))
    assert victim.read_text() == "precious"


def test_validated_user_reads_only_the_header_of_the_broker_kind():
    headers = {"JMSXUserID": "amq", "_AMQ_VALIDATED_USER": "forged", "user-id": "rabbit"}
    assert validated_user(headers, "activemq") == "amq"
    assert validated_user(headers, "artemis") == "amq"
    assert validated_user(headers, "rabbitmq") == "rabbit"
    assert validated_user(headers, "auto") is None
    assert validated_user({"JMSXUserID": ""}, "activemq") is None
    assert validated_user({"user-id": "x"}, "activemq") is None


def test_orphan_reaping_survives_a_clock_step(monkeypatch):
    stand_in = subprocess.Popen(["sleep", "60"])
    job = subprocess.Popen(["sleep", "60"], start_new_session=True,
                           env={environment.MARKER: environment.agent_identity(stand_in.pid),
                                                   "PATH": os.environ["PATH"]})
    try:
        real = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 7.0)  # the clock was stepped
        reaper.reap_orphans()
        assert job.poll() is None, "a job of a live agent was killed after a clock step"
        stand_in.kill()
        stand_in.wait()
        assert job.pid in reaper.reap_orphans()
        assert job.wait(10) == -signal.SIGKILL
    finally:
        for proc in (stand_in, job):
            proc.kill()
            proc.wait()


def test_identity_uses_boot_id_and_start_ticks():
    text = identity.identity(os.getpid())
    pid, boot, ticks = text.split(":")
    assert int(pid) == os.getpid() and boot == identity.boot_id() and int(ticks) > 0
    assert identity.alive(text) is True
    assert identity.alive("%s:%s:%d" % (pid, boot, int(ticks) + 1)) is False
    assert identity.alive("%s:another-boot:%s" % (pid, ticks)) is False
    assert identity.alive("123:4567.89") is None
