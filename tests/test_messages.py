"""Run payload validation and the choice of error line."""

import re

import psutil
import pytest

from postprocessing.errors import InvalidMessage
from postprocessing.jobs.limits import MemoryLimit, TimeLimit
from postprocessing.jobs.process import ProcessResult
from postprocessing.messages import decode_body, parse_run, raw_echo
from postprocessing.processors.reduction import conda_env, error_line

GOOD = {"facility": "sns", "instrument": "cncs", "ipts": "ipts-12", "run_number": "0042",
        "data_file": "/SNS/CNCS/IPTS-12/nexus/CNCS_42.nxs.h5"}


def test_lenient_fields_are_normalised_for_paths_only():
    req = parse_run(GOOD, "SNS")
    assert (req.facility, req.instrument, req.ipts, req.run_number) == ("SNS", "CNCS", "IPTS-12", "42")
    assert req.fields == GOOD and req.label == "CNCS 42"
    no_facility = {k: v for k, v in GOOD.items() if k != "facility"}
    assert parse_run(dict(no_facility, run_number=42), "HFIR").facility == "HFIR"


@pytest.mark.parametrize("field, value", [
    ("instrument", ".."), ("instrument", "a/b"), ("instrument", ""), ("instrument", "a\x00b"),
    ("instrument", 5), ("ipts", "../IPTS-1"), ("ipts", "x" * 100), ("run_number", -1),
    ("run_number", "12a"), ("run_number", 1.5), ("run_number", False), ("data_file", ""),
    ("data_file", "/a\x00b"), ("data_file", ["x"]), ("facility", "S/N"),
])
def test_bad_fields_are_rejected(field, value):
    with pytest.raises(InvalidMessage):
        parse_run(dict(GOOD, **{field: value}), "SNS")


def test_decode_body_limits():
    with pytest.raises(InvalidMessage, match="too large"):
        decode_body(b"{}" * 10, 5)
    with pytest.raises(InvalidMessage, match="nested too deeply|Malformed"):
        decode_body(b"[" * 200000, 10 ** 7)
    assert raw_echo(b"\x00" + b"a" * 5000).startswith("\\x00aaa")
    assert raw_echo(b"a" * 5000).endswith("...[5000 bytes]")


def test_error_line_choice():
    failed = ProcessResult(1)
    tb = "Traceback (most recent call last):\n  File x\nRuntimeError: This is an ERROR!\n"
    assert error_line(tb, failed) == "This is an ERROR!"
    assert error_line("first\nError: one\nlater Error: two\nnoise\n", failed) == "two"
    assert error_line("warn 1\nwarn 2\n\n", failed) == "warn 2"
    assert error_line("", ProcessResult(-9)) == "killed by signal SIGKILL"
    assert error_line("", ProcessResult(4)) == "exit status 4"


def test_conda_env_line(tmp_path):
    script = tmp_path / "reduce.py"
    script.write_text("# CONDA_ENV='commented'\nCONDA_ENV = \"mantid-dev\"\n")
    assert conda_env(str(script)) == "mantid-dev"
    script.write_text("CONDA_ENV='bad name; rm -rf'\n")
    assert conda_env(str(script)) is None


@pytest.mark.parametrize("line", ["CONDA_ENV='sasview'", "CONDA_ENV=sasview", "    CONDA_ENV = 'sasview'",
                                  '\tCONDA_ENV="sasview"  # the env', "CONDA_ENV = sasview"])
def test_conda_env_line_read_as_sns_reads_it(tmp_path, line):
    """SNS accepts the line indented and with or without quotes."""
    script = tmp_path / "reduce.py"
    script.write_text("import sys\n%s\n" % line)
    assert conda_env(str(script)) == "sasview"


def test_memory_limit_reads_as_sns_words_it():
    """The workflow stack's system tests look for SNS's text."""
    limit = MemoryLimit(50.0, total_bytes=2 * 1024 * 1024)
    reason = limit.check(psutil.Process())
    assert reason is not None
    assert re.match(r"Total memory usage exceeded limit \([0-9]+\.[0-9]{6} GiB > 0\.000977 GiB\)\. "
                    r"Terminating job\.", reason), reason
    assert MemoryLimit(100.0, total_bytes=1 << 50).check(psutil.Process()) is None
    expired = TimeLimit(0.0)
    assert (expired.check() or "").startswith("Time limit exceeded")


def test_data_file_wording(tmp_path, monkeypatch):
    """The SNS agent's words for each way a data file can be unusable (EACCES simulated:
    the suite runs as root, which can read anything)."""
    from postprocessing import config, layout

    cfg, _ = config.from_mapping({"data_root": str(tmp_path)})
    good = tmp_path / "CNCS_1.nxs.h5"
    good.write_bytes(b"x")
    assert layout.check_readable(cfg, str(good)) is None
    assert layout.check_readable(cfg, str(tmp_path / "no.h5")) == "Data file not found: %s" % (tmp_path / "no.h5")
    assert layout.check_readable(cfg, "/etc/hostname").startswith("Data file is outside the data root")
    assert layout.check_readable(cfg, str(tmp_path)).startswith("Data file open error for file %s" % tmp_path)

    def denied(path, flags):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(layout.os, "open", denied)
    assert layout.check_readable(cfg, str(good)) == "Data file permission denied: %s" % good
