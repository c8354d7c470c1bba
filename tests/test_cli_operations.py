"""The operator commands as a whole: --help everywhere, clear exit codes, no tracebacks."""

import pytest

from tests.support.cli import assert_no_traceback, run_cli, write_config

SUBCOMMANDS = [
    ["run"], ["start"], ["stop"], ["restart"], ["status"], ["requeue"], ["ping"], ["dlq"],
    ["dlq", "list"], ["dlq", "show"], ["dlq", "reinject"], ["dlq", "purge"],
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command):
    proc = run_cli(None, *command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: postprocessing %s" % " ".join(command))


@pytest.mark.parametrize("command", [["status"], ["ping"], ["dlq", "list"], ["requeue", "--runs", "1"],
                                     ["stop"]], ids=" ".join)
def test_missing_or_bad_config_is_exit_2(tmp_path, command):
    proc = run_cli(str(tmp_path / "absent.conf"), *command)
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
    assert_no_traceback(proc)
    bad = tmp_path / "bad.conf"
    bad.write_text("{not json")
    proc = run_cli(str(bad), *command)
    assert proc.returncode == 2 and "is not valid JSON" in proc.stderr
    assert_no_traceback(proc)
    wrong = write_config(str(tmp_path / "wrong.conf"), {"metrics_port": 99999})
    proc = run_cli(wrong, *command)
    assert proc.returncode == 2 and "metrics_port" in proc.stderr


def test_usage_errors_are_exit_2(tmp_path):
    conf = write_config(str(tmp_path / "ok.conf"), {})
    for args in (["nosuch"], ["dlq", "explode"], ["ping", "--expect", "many"], []):
        proc = run_cli(conf, *args)
        assert proc.returncode == 2, args
        assert_no_traceback(proc)


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_lists_config_in_its_help(command):
    proc = run_cli(None, *command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--config FILE" in proc.stdout


@pytest.mark.parametrize("command", [["run"], ["status"], ["stop"], ["ping"], ["dlq", "list"],
                                     ["requeue", "--runs", "1", "--instrument", "CNCS", "--ipts", "IPTS-1"]],
                         ids=lambda c: c[0] if c[0] != "dlq" else "dlq list")
def test_config_after_the_subcommand_is_used(tmp_path, command):
    """Operators type ``postprocessing status --config FILE`` as often as the other way round."""
    wrong = write_config(str(tmp_path / "wrong.conf"), {"metrics_port": 99999})
    proc = run_cli(None, *command, "--config", wrong)
    assert "unrecognized arguments" not in proc.stderr
    assert proc.returncode == 2 and "metrics_port" in proc.stderr, proc.stderr
    assert_no_traceback(proc)
    good = write_config(str(tmp_path / "good.conf"), {})
    proc = run_cli(good, *command, "--config", wrong)
    assert proc.returncode == 2 and "metrics_port" in proc.stderr, "the later --config wins"
    proc = run_cli(wrong, *command[:1], "--help")
    assert proc.returncode == 0
