"""configuration/grafana/: valid JSON dashboards that query only metrics the agent exports."""

import glob
import json
import os
import shutil
import subprocess

import pytest

from tests.support import promql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARDS = sorted(glob.glob(os.path.join(ROOT, "configuration", "grafana", "*.json")))


def exprs(dashboard):
    """Every PromQL expression of the dashboard's panels (rows' nested panels too)."""
    out = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        out.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
    return out


def load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_there_is_a_dashboard_and_it_is_valid_json():
    assert DASHBOARDS, "no dashboard in configuration/grafana/"
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["title"] and dashboard["uid"] and exprs(dashboard), path
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), "%s: panel ids repeat" % path


def test_every_queried_metric_is_exported():
    exported = promql.exported() | promql.PROMETHEUS_OWN
    for path in DASHBOARDS:
        for expr in exprs(load(path)):
            queried = promql.queried(expr)
            assert queried, "%s: no metric found in %r" % (path, expr)
            assert queried <= exported, "%s: %r queries %s, which the agent does not export" % (
                path, expr, sorted(queried - exported))


def test_the_dashboard_shows_what_the_issue_asks_for():
    queried = set()
    for path in DASHBOARDS:
        for expr in exprs(load(path)):
            queried |= promql.queried(expr)
    wanted = {"postprocessing_queue_messages", "postprocessing_queue_oldest_message_age_seconds",
              "postprocessing_dlq_messages", "postprocessing_slots_used", "postprocessing_draining",
              "postprocessing_paused", "postprocessing_outcomes_sent_total", "postprocessing_job_limit_kills_total",
              "postprocessing_duplicate_deliveries_total", "up"}
    assert wanted <= queried, "not on any dashboard: %s" % sorted(wanted - queried)


def test_the_check_finds_a_metric_the_agent_does_not_export():
    """The name parser is what the checks above rest on: it must see a wrong name."""
    exported = promql.exported()
    assert promql.queried('sum by (queue) (rate(postprocessing_no_such_metric{job="x"}[5m]))') == {
        "postprocessing_no_such_metric"}
    assert "postprocessing_no_such_metric" not in exported
    assert promql.queried('histogram_quantile(0.95, sum by (le) (rate(foo_bucket[1h])))') == {"foo_bucket"}
    assert promql.queried("time() - postprocessing_paused_since_timestamp_seconds") == {
        "postprocessing_paused_since_timestamp_seconds"}


def test_every_expression_parses_as_promql(tmp_path):
    """promtool checks each dashboard query as the expression of a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and promtool is missing (apt-get install prometheus)", pytrace=False)
        pytest.skip("promtool is missing: apt-get install prometheus (under CI=true this fails)")
    all_exprs = [e for path in DASHBOARDS for e in exprs(load(path))]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:query_%d" % i, "expr": e} for i, e in enumerate(all_exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules), encoding="utf-8")  # JSON is YAML
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: %d rules found" % len(all_exprs) in checked.stdout
    path.write_text(json.dumps({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum(("}]}]}),
                    encoding="utf-8")
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True).returncode != 0
