"""The README's Reliability section is rendered from docs/reliability.json, never typed by hand."""

from tests.support import reliability


def test_readme_reliability_is_current():
    rows = reliability.load()
    assert rows, "docs/reliability.json is empty: run the reliability tests (make test)"
    assert reliability.readme_section() == reliability.render(rows)


def test_a_test_run_writes_its_figures_to_the_build_directory_only(tmp_path):
    before = (open(reliability.JSON_PATH, "rb").read(), open(reliability.README, "rb").read())
    reliability.save({"demo_row": {"done": "one thing", "observed": "1 of 1"}}, build_dir=str(tmp_path))
    assert reliability.measured(str(tmp_path)) == {"demo_row": {"done": "one thing", "observed": "1 of 1"}}
    assert (open(reliability.JSON_PATH, "rb").read(), open(reliability.README, "rb").read()) == before
