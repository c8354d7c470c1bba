"""The README's Reliability section is rendered from docs/reliability.json, never typed by hand."""

from tests.support import reliability


def test_readme_reliability_is_current():
    rows = reliability.load()
    assert rows, "docs/reliability.json is empty: run the reliability tests (make test)"
    assert reliability.readme_section() == reliability.render(rows)
