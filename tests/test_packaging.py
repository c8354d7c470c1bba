"""The systemd unit (systemd-analyze verify) and the RPM (real rpmbuild, rpm -qlp/--scripts, install)."""

import configparser
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from tests.support.agentproc import ROOT
from tests.support.cli import require_tools

UNIT = os.path.join(ROOT, "rpm", "autoreduce-queue-processor.service")
SITELIB = "/usr/lib/python3.9/site-packages"
with open(os.path.join(ROOT, "configuration", "post_processing.conf"), encoding="utf-8") as _example:
    #: The directory of the example config's log file, which the RPM must create.
    LOGDIR = os.path.dirname(json.load(_example)["log_file"])


def read_unit(path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with open(path, encoding="utf-8") as handle:
        parser.read_file(handle)
    return parser


def entry_point(path):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("#!%s\nimport sys\nfrom postprocessing.cli.main import main\nsys.exit(main())\n"
                     % sys.executable)
    os.chmod(path, 0o755)
    return path


def verify(unit_text, tmp_path, name="autoreduce-queue-processor.service"):
    """systemd-analyze verify, with /usr/bin/postprocessing pointing at a real entry point."""
    require_tools("systemd-analyze", ["systemd-analyze"])
    command = entry_point(str(tmp_path / "postprocessing"))
    path = tmp_path / name
    path.write_text(unit_text.replace("/usr/bin/postprocessing", command))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=str(tmp_path))


def test_unit_passes_systemd_analyze_verify(tmp_path):
    proc = verify(open(UNIT).read(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", "systemd-analyze warned:\n" + proc.stderr
    broken = verify(open(UNIT).read().replace("KillMode=control-group", "KillMode=bogus"), tmp_path,
                    "broken.service")
    assert "kill mode" in broken.stderr, "verify must notice a bad setting: %s" % broken.stderr


def test_unit_settings():
    service = read_unit(UNIT)["Service"]
    assert service["ExecStart"] == "/usr/bin/postprocessing run"
    assert service["ExecStop"] == "/usr/bin/postprocessing stop --pid=${MAINPID}"
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "control-group"
    assert service["User"] == "autoreduce" and service["Group"] == "autoreduce"
    assert service["TimeoutStopSec"] == "75min", "must exceed the 60 min job limit plus the shutdown"
    assert service["Environment"] == "POSTPROCESSING_CONFIG=/etc/autoreduce/post_processing.conf"
    assert service["StateDirectory"] == "postprocessing", "the journal_path default lives in /var/lib/postprocessing"
    assert read_unit(UNIT)["Install"]["WantedBy"] == "multi-user.target"


def test_unit_is_ordered_after_sssd():
    """The service account and its file access come from SSSD, as SNS's unit says."""
    unit = read_unit(UNIT)["Unit"]
    assert "sssd.service" in unit["After"].split() and "sssd.service" in unit["Wants"].split()


def test_example_config_logs_where_sns_does():
    assert LOGDIR == "/var/log/SNS_applications"


def test_psycopg2_is_a_core_dependency():
    """``requeue --from-db`` works after a plain ``pip install .``: no extra to ask for."""
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    core = re.search(r"^dependencies = \[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    assert core is not None
    assert re.search(r'"psycopg2-binary>=2\.9"', core.group(1)), core.group(1)
    assert "[db]" not in open(os.path.join(ROOT, "postprocessing", "cli", "requeue.py")).read()


# -- the RPM ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rpm_file(tmp_path_factory):
    require_tools("rpmbuild", ["rpmbuild", "rpm", "make"])
    top = tmp_path_factory.mktemp("rpmtop")
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["make", "rpm", "RPM_TOPDIR=%s" % top, "DIST=%s" % dist, "RPM_USER=snsred",
                           "PYTHON=%s" % sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rpms = [os.path.join(dp, f) for dp, _, files in os.walk(str(top / "RPMS")) for f in files]
    assert len(rpms) == 1, rpms
    return rpms[0]


def rpm_query(*args):
    proc = subprocess.run(["rpm"] + list(args), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_rpm_is_noarch_and_lists_its_files(rpm_file):
    assert rpm_file.endswith(".noarch.rpm")
    assert rpm_query("-qp", "--qf", "%{ARCH} %{NAME}", rpm_file) == "noarch postprocessing"
    files = set(rpm_query("-qlp", rpm_file).split())
    for expected in (
        "/usr/bin/postprocessing",
        SITELIB + "/postprocessing/__init__.py",
        SITELIB + "/postprocessing/cli/main.py",
        SITELIB + "/postprocessing/agent/agent.py",
        "/usr/lib/systemd/system/autoreduce-queue-processor.service",
        "/etc/autoreduce/post_processing.conf",
        LOGDIR,
        "/opt/postprocessing/scripts/mantidpython.py",
        "/usr/share/doc/postprocessing/operations.md",
        "/usr/share/doc/postprocessing/security.md",
        "/usr/share/doc/postprocessing/prometheus/alerts.yml",
        "/usr/share/doc/postprocessing/prometheus/alerts_test.yml",
        "/usr/share/doc/postprocessing/grafana/postprocessing-fleet.json",
    ):
        assert expected in files, expected
    assert not [f for f in files if "__pycache__" in f or "/tests/" in f]

    flags = {}
    for line in rpm_query("-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:"
                                         "%{FILEGROUPNAME} %{FILENAMES}\n]", rpm_file).splitlines():
        parts = line.split()
        if len(parts) == 4:
            flags[parts[3]] = (parts[0], parts[1], parts[2])
        else:
            flags[parts[2]] = ("", parts[0], parts[1])
    assert flags["/etc/autoreduce/post_processing.conf"] == ("cn", "-rw-r-----", "root:snsred")
    assert flags[LOGDIR] == ("", "drwxr-xr-x", "snsred:snsred")
    assert flags["/opt/postprocessing/scripts/mantidpython.py"][1] == "-rwxr-xr-x"
    assert flags["/var/lib/postprocessing"] == ("", "drwxr-x---", "snsred:snsred"), "no room for the journal"
    assert flags["/usr/bin/postprocessing"][1] == "-rwxr-xr-x"
    requires = rpm_query("-qp", "--requires", rpm_file)
    assert "python3 >= 3.9" in requires and "python3dist(stomp-py) >= 8.1" in requires
    assert "python3dist(psycopg2)" in requires.split("\n")


def test_rpm_scriptlets(rpm_file):
    scripts = rpm_query("-qp", "--scripts", rpm_file)
    for section in ("preinstall", "postinstall", "preuninstall", "postuninstall"):
        assert "%s scriptlet" % section in scripts
    assert "useradd -r -g snsred" in scripts
    assert "systemctl preset autoreduce-queue-processor.service" in scripts
    assert "systemctl --no-reload disable --now autoreduce-queue-processor.service" in scripts
    assert "systemctl try-restart autoreduce-queue-processor.service" in scripts


@pytest.mark.parametrize("tag, argument, expected", [
    ("PREIN", "1", ["getent group snsred", "groupadd -r snsred", "getent passwd snsred",
                    "useradd -r -g snsred -d /var/log/SNS_applications -s /sbin/nologin "
                    "-c autoreduction agent snsred"]),
    ("POSTIN", "1", ["systemctl daemon-reload", "systemctl preset autoreduce-queue-processor.service"]),
    ("POSTIN", "2", []),
    ("PREUN", "0", ["systemctl --no-reload disable --now autoreduce-queue-processor.service"]),
    ("PREUN", "1", []),
    ("POSTUN", "1", ["systemctl daemon-reload", "systemctl try-restart autoreduce-queue-processor.service"]),
    ("POSTUN", "0", ["systemctl daemon-reload"]),
])
def test_rpm_scriptlets_do_the_right_thing(rpm_file, tmp_path, tag, argument, expected):
    """Run each scriptlet with install (1), upgrade (2/1) or removal (0), against logging stand-ins."""
    if not os.access("/usr/bin/systemctl", os.X_OK):
        pytest.skip("the scriptlets only call systemctl where /usr/bin/systemctl exists")
    script = rpm_query("-qp", "--qf", "%%{%s}" % tag, rpm_file)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    for tool in ("getent", "groupadd", "useradd", "systemctl"):
        stub = bindir / tool
        stub.write_text('#!/bin/sh\necho "$(basename "$0") $*" >> %s\n[ "$(basename "$0")" != getent ]\n' % log)
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    proc = subprocess.run(["/bin/sh", "-e", "-c", script, "scriptlet", argument], capture_output=True, text=True,
                          env={"PATH": "%s:/usr/bin:/bin" % bindir}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    assert calls == expected


def test_rpm_installs_into_a_scratch_root_and_runs(rpm_file, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    proc = subprocess.run(["rpm", "-i", "--root", str(root), "--nodeps", "--noscripts", rpm_file],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/autoreduce/post_processing.conf").is_file()
    assert (root / LOGDIR.lstrip("/")).is_dir()
    unit = read_unit(str(root / "usr/lib/systemd/system/autoreduce-queue-processor.service"))["Service"]
    assert unit["User"] == "snsred" and unit["Group"] == "snsred"

    command = str(root / "usr/bin/postprocessing")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(root) + SITELIB,
           "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import postprocessing; print(postprocessing.__file__)"],
                           env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(root) + SITELIB + "/postprocessing/__init__.py"
    for args in (["--help"], ["requeue", "--help"], ["dlq", "purge", "--help"], ["--version"]):
        proc = subprocess.run([sys.executable, command] + args, env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, command, "--help"], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=60)
    for name in ("run", "start", "stop", "restart", "status", "requeue", "ping", "dlq"):
        assert "    %s " % name in proc.stdout
    conf = str(root / "etc/autoreduce/post_processing.conf")
    proc = subprocess.run([sys.executable, command, "--config", conf, "status"], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "not running" in proc.stdout

    verified = verify(open(str(root / "usr/lib/systemd/system/autoreduce-queue-processor.service")).read(), tmp_path)
    assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr


SNS_FAKE_SPEC = """
Name:           postprocessing
Version:        4.5.0
Release:        1
Summary:        stand-in for SNS's post_processing_agent 4.5.0 package (its file layout, no code)
License:        MIT
BuildArch:      noarch
%%define debug_package %%{nil}

%%description
The file layout of SNS's postprocessing 4.5.0 RPM, to upgrade from.

%%install
mkdir -p %%{buildroot}/opt/postprocessing/postprocessing %%{buildroot}/opt/postprocessing/scripts
echo "# SNS 4.5.0" > %%{buildroot}/opt/postprocessing/postprocessing/__init__.py
echo "# SNS 4.5.0" > %%{buildroot}/opt/postprocessing/postprocessing/Consumer.py
echo "# SNS 4.5.0" > %%{buildroot}/opt/postprocessing/queueProcessor.py
echo "# SNS 4.5.0" > %%{buildroot}/opt/postprocessing/scripts/mantidpython.py
mkdir -p %%{buildroot}%(sitelib)s
echo /opt/postprocessing > %%{buildroot}%(sitelib)s/postprocessing.pth
mkdir -p -m 1755 %%{buildroot}/var/log/SNS_applications
mkdir -p %%{buildroot}/usr/lib/systemd/system
printf '[Unit]\\nRequires=sssd.service\\nAfter=sssd.service\\n' \\
    > %%{buildroot}/usr/lib/systemd/system/autoreduce-queue-processor.service

%%files
/opt/postprocessing
%(sitelib)s/postprocessing.pth
%%dir /var/log/SNS_applications
/usr/lib/systemd/system/autoreduce-queue-processor.service
""" % {"sitelib": SITELIB}


@pytest.fixture(scope="module")
def sns_rpm_file(tmp_path_factory):
    require_tools("rpmbuild", ["rpmbuild", "rpm"])
    top = tmp_path_factory.mktemp("snsrpm")
    spec = top / "postprocessing-4.5.0.spec"
    spec.write_text(SNS_FAKE_SPEC)
    proc = subprocess.run(["rpmbuild", "-bb", "--define", "_topdir %s" % top, str(spec)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [built] = [os.path.join(dp, f) for dp, _, files in os.walk(str(top / "RPMS")) for f in files]
    return built


def test_rpm_upgrades_sns_postprocessing_4_5_0(rpm_file, sns_rpm_file, tmp_path):
    """A facility swaps agents with rpm -U (dnf upgrade), keeping its configuration."""
    root = tmp_path / "root"
    root.mkdir()
    install = ["rpm", "--root", str(root), "--nodeps", "--noscripts"]
    proc = subprocess.run(install + ["-i", sns_rpm_file], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    facility_conf = root / "etc/autoreduce/post_processing.conf"
    facility_conf.parent.mkdir(parents=True)
    facility_conf.write_text('{"amq_user": "facility-own-settings"}\n')

    proc = subprocess.run(install + ["-U", rpm_file], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    installed = rpm_query("--root", str(root), "-q", "--qf", "%{NAME} %{VERSION}\n", "postprocessing")
    assert installed.split("\n")[:-1] == ["postprocessing " + rpm_query("-qp", "--qf", "%{VERSION}", rpm_file)]
    assert facility_conf.read_text() == '{"amq_user": "facility-own-settings"}\n', "the facility's config is kept"
    assert not (root / SITELIB.lstrip("/") / "postprocessing.pth").exists(), "the old package path is gone"
    assert not (root / "opt/postprocessing/postprocessing").exists()
    assert (root / SITELIB.lstrip("/") / "postprocessing/cli/main.py").is_file()
    mantidpython = root / "opt/postprocessing/scripts/mantidpython.py"
    with open(os.path.join(ROOT, "postprocessing", "jobs", "mantidpython.py"), encoding="utf-8") as handle:
        assert mantidpython.read_text() == handle.read()
    assert os.access(str(mantidpython), os.X_OK)
    assert (root / "var/log/SNS_applications").is_dir()
    unit = read_unit(str(root / "usr/lib/systemd/system/autoreduce-queue-processor.service"))
    assert "sssd.service" in unit["Unit"]["After"].split()
