"""Issue 11, units: log escaping, spawn failures, validated users, ping policy, paths."""

import os
import tempfile

import pytest

from postprocessing import logsafe
from postprocessing.errors import JobFailed
from postprocessing.jobs.process import JobProcess


def test_log_text_escapes_every_control_character():
    assert logsafe.text("a\nb\rc\td\x1b[31me\x00f\u2028g\x85") == "a\\nb\\rc\\td\\x1b[31me\\x00f\\u2028g\\x85"
    assert logsafe.text(ValueError("x\ny")) == "x\\ny"
    assert logsafe.arg(3) == 3 and logsafe.arg(2.5) == 2.5
    assert logsafe.arg(["a\n"]) == "['a\\n']"


def test_a_failed_spawn_closes_its_fds_and_names_the_program():
    before = len(os.listdir("/proc/self/fd"))
    with tempfile.TemporaryFile() as out:
        for _ in range(20):
            with pytest.raises(JobFailed, match="cannot start /nonexistent/python9: No such file"):
                JobProcess(["/nonexistent/python9", "x.py"], "/", out, out, {})
    assert len(os.listdir("/proc/self/fd")) == before
