"""configuration/prometheus/alerts.yml: valid for promtool, its unit tests pass, and it queries
only metrics the agent exports.  Needs promtool (Debian's prometheus package): under CI its
absence fails the test."""

import os
import shutil
import subprocess

import pytest
import yaml

from tests.support import promql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "configuration", "prometheus", "alerts.yml")
RULE_TESTS = os.path.join(ROOT, "configuration", "prometheus", "alerts_test.yml")


@pytest.fixture(scope="module")
def promtool():
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and promtool is missing (apt-get install prometheus; scripts/install-deps.sh)",
                        pytrace=False)
        pytest.skip("promtool is missing: apt-get install prometheus (under CI=true this fails)")
    return found


def run(promtool, *args):
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_checks_the_rules(promtool):
    checked = run(promtool, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def test_promtool_unit_tests_pass(promtool):
    tested = run(promtool, "test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_promtool_unit_tests_can_fail(promtool, tmp_path):
    """The same tests against rules whose DLQ threshold is wrong: promtool must say FAILED."""
    with open(RULES, encoding="utf-8") as handle:
        rules = handle.read()
    dlq = "max by (queue) (postprocessing_dlq_messages)"
    broken = rules.replace(dlq + " > 0", dlq + " > 5")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    with open(RULE_TESTS, encoding="utf-8") as handle:
        (tmp_path / "alerts_test.yml").write_text(handle.read(), encoding="utf-8")
    tested = run(promtool, "test", "rules", str(tmp_path / "alerts_test.yml"))
    assert tested.returncode != 0 and "FAILED" in tested.stdout + tested.stderr


def test_the_issue_asks_for_every_alert_and_each_has_a_unit_test():
    with open(RULES, encoding="utf-8") as handle:
        rules = [r for g in yaml.safe_load(handle)["groups"] for r in g["rules"]]
    with open(RULE_TESTS, encoding="utf-8") as handle:
        tested = {t["alertname"] for case in yaml.safe_load(handle)["tests"] for t in case["alert_rule_test"]}
    names = {r["alert"] for r in rules}
    assert {"PostprocessingAgentDown", "PostprocessingDeadLettersWaiting", "PostprocessingQueueBackingUp",
            "PostprocessingMemoryKillsRising", "PostprocessingInstrumentPausedTooLong"} <= names
    assert names == tested, "alerts without a unit test: %s" % sorted(names - tested)


def test_the_rules_query_only_metrics_the_agent_exports():
    with open(RULES, encoding="utf-8") as handle:
        rules = [r for g in yaml.safe_load(handle)["groups"] for r in g["rules"]]
    exported = promql.exported() | promql.PROMETHEUS_OWN
    for rule in rules:
        queried = promql.queried(rule["expr"])
        assert queried, rule["expr"]
        assert queried <= exported, "%s queries %s, which the agent does not export" % (
            rule["alert"], sorted(queried - exported))


def test_every_exported_metric_is_documented_in_operations_md():
    with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as handle:
        doc = handle.read()
    names = {n for n in promql.exported() if not n.endswith(("_created", "_bucket", "_sum", "_count"))}
    names |= {"postprocessing_job_duration_seconds"}
    missing = sorted(n for n in names if "`%s`" % n not in doc)
    assert not missing, "not described in docs/operations.md: %s" % missing
    assert len(names) >= 20
