#!/usr/bin/python3
"""Installed as /opt/postprocessing/scripts/mantidpython.py, where SNS configurations point python_exec."""
import sys

from postprocessing.cli.mantidpython import main

sys.exit(main(sys.argv[1:]))
