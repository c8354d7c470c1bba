"""SNS's published configuration files, read from ``<repo>/../shared/sns`` (never copied here).

Without that directory the tests that need it fail under ``CI`` and skip loudly elsewhere.
"""

import json
import os
from typing import Any, Dict

from tests.support.agentproc import ROOT
from tests.support.cli import service_unavailable

SNS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "sns")
FILES = ("post_processing.conf", "post_processing.conf.original", "integration.post_processing.conf",
         "post_process_consumer.conf.development")


def sns_file(name: str) -> str:
    path = os.path.join(SNS_DIR, name)
    if not os.path.isfile(path):
        service_unavailable("SNS's configuration files", "%s is missing" % path)
    return path


def sns_config(name: str) -> Dict[str, Any]:
    with open(sns_file(name), encoding="utf-8") as handle:
        data: Dict[str, Any] = json.load(handle)
    return data
