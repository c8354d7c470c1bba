"""The pure helpers of the ONCat processors and the script writer."""

import json
import os

import pytest

from postprocessing.processors.catalog import field
from postprocessing.processors.create_script import ScriptError, ScriptWriter, fill, log_parameters, template_values
from postprocessing.processors.oncat import batches, belongs_to_run
from postprocessing.processors.oncat_reduced import record_name, record_problem


@pytest.mark.parametrize("name, run, expected", [
    ("Run_2482_0001.fits", "2482", True),
    ("20240101_Run_2482_0001.fits", "2482", True),
    ("ob_Run_2482.tiff", "2482", True),
    ("Run_2482", "2482", True),
    ("dc_Run_002482_0001.fits", "2482", True),
    ("dc_Run_2482_0001.fits", "002482", True),
    ("img_Run_24820_0001.fits", "2482", False),
    ("img_Run_248_0001.fits", "2482", False),
    ("xRun_2482_0001.fits", "2482", False),
    ("img-Run_2482.fits", "2482", False),
    ("run_2482.fits", "2482", False),
    ("Run_1_Run_2482.fits", "2482", True),
    ("Run_.fits", "2482", False),
])
def test_run_token_filter(name, run, expected):
    assert belongs_to_run(name, run) is expected


def test_batches_hold_at_most_fifty():
    paths = ["/f%03d" % i for i in range(101)]
    assert [len(b) for b in batches(paths)] == [50, 50, 1]
    assert [p for b in batches(paths) for p in b] == paths
    assert batches([]) == []


def test_field_follows_dotted_paths():
    content = {"metadata": {"entry": {"daslogs": {"bl10:exp:im:imagefilepath": {"value": "a"}}}}}
    assert field(content, "metadata.entry.daslogs.bl10:exp:im:imagefilepath.value") == "a"
    assert field(content, "metadata.entry.missing.value") is None
    assert field({"metadata": ["not", "a", "dict"]}, "metadata.entry") is None
    assert field("text", "metadata") is None


def test_fill_names_every_missing_argument_and_evaluates_nothing():
    with pytest.raises(ScriptError, match="missing template arguments: b, c$"):
        fill("$a ${b} $c $b $$", {"a": "1"})
    assert fill("$a ${b}x $$a", {"a": "${b}", "b": "2"}) == "${b} 2x $a"
    with pytest.raises(ScriptError, match="bad template"):
        fill("cost $ 5", {})


def test_template_values_decode_strings_only():
    assert template_values({"a": "x+y%2Fz", "b": False, "c": 3, "d": None}) == {
        "a": "x y/z", "b": "False", "c": "3", "d": "None"}


def test_parameter_log_header_once(tmp_path):
    log_parameters(str(tmp_path), {"b": "2", "a": "x\ny"}, str(tmp_path))
    log_parameters(str(tmp_path), {"b": "3\t4", "a": "z"}, str(tmp_path))
    lines = (tmp_path / "reduction_parameters.txt").read_text().splitlines()
    assert lines[0] == "time\ta\tb"
    assert [line.split("\t")[1:] for line in lines[1:]] == [["x; y", "2"], ["z", "3 4"]]


def test_writer_without_backups(tmp_path):
    writer = ScriptWriter(str(tmp_path), "CNCS", keep=0)
    writer.install(b"one\n", 0o644)
    writer.install(b"two\n", 0o644)
    assert sorted(os.listdir(str(tmp_path))) == ["reduce_CNCS.py"]
    assert (tmp_path / "reduce_CNCS.py").read_bytes() == b"two\n"


def test_writer_skips_backup_of_identical_content(tmp_path):
    writer = ScriptWriter(str(tmp_path), "CNCS", keep=5)
    for content in (b"one\n", b"one\n", b"two\n"):
        writer.install(content, 0o644)
    backups = [n for n in os.listdir(str(tmp_path)) if n.endswith(".bak")]
    assert len(backups) == 1 and (tmp_path / backups[0]).read_bytes() == b"one\n"


@pytest.mark.parametrize("data_file, name", [
    ("/SNS/CNCS/IPTS-1/nexus/CNCS_12.nxs.h5", "CNCS_12.json"),
    ("/SNS/CNCS/IPTS-1/0/12/NeXus/CNCS_12_event.nxs", "CNCS_12_event.json"),
])
def test_record_name(data_file, name):
    assert record_name(data_file) == name


def test_record_problem(tmp_path):
    path = tmp_path / "r.json"
    assert record_problem(str(path)).startswith("no reduction record")
    path.write_text(json.dumps({"input_files": [], "output_files": []}))
    assert record_problem(str(path)) is None
    path.write_text(json.dumps({"input_files": []}))
    assert record_problem(str(path)).endswith("has no output_files")
    path.write_bytes(b"\xff")
    assert "is not JSON" in record_problem(str(path))
