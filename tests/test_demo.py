"""``make demo`` and ``make demo BROKER=artemis``: the sample run reduces on each broker."""

import subprocess
import sys

import pytest

from tests.support.agentproc import ROOT

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("kind", ["activemq", "artemis"])
def test_demo_reduces_the_sample_run(kind):
    proc = subprocess.run([sys.executable, "-m", "postprocessing.devtools.demo", "--broker", kind],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REDUCTION.COMPLETE" in proc.stdout
    assert "DEMO_1234_reduced.txt" in proc.stdout
    assert "stopped agent (exit 0)" in proc.stdout
