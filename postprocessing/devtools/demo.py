"""``make demo``: a private broker, the agent, one sample run, and what came back.

    python3 -m postprocessing.devtools.demo [--broker activemq|artemis] [--keep]

Builds a facility tree under a temporary ``data_root`` with a sample ``reduce_DEMO.py``
and a run file, starts a broker and the agent (``postprocessing run``), sends the run to
``REDUCTION.DATA_READY`` as the workflow manager would, prints every message the agent
sent back and where the output landed, then stops everything.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Tuple

import stomp

from postprocessing.devtools import activemq, artemis

BROKERS = {"activemq": ("ActiveMQ Classic", activemq), "artemis": ("ActiveMQ Artemis", artemis)}

REDUCE_SCRIPT = '''"""Sample reduction: writes a small summary of the run file into the output directory."""
import hashlib
import os
import sys

data_file, out_dir = sys.argv[1], sys.argv[2]
with open(data_file, "rb") as handle:
    content = handle.read()
summary = os.path.join(out_dir, os.path.basename(data_file).replace(".nxs.h5", "_reduced.txt"))
with open(summary, "w") as handle:
    handle.write("run file: %s\\nbytes: %d\\nsha256: %s\\n" % (
        data_file, len(content), hashlib.sha256(content).hexdigest()))
print("reduced", data_file, "->", summary)
'''

OUTCOME_QUEUES = ("REDUCTION.STARTED", "REDUCTION.COMPLETE", "REDUCTION.ERROR", "REDUCTION.DISABLED",
                  "POSTPROCESS.ERROR")


class Listener(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.messages: List[Tuple[str, Dict[str, Any]]] = []
        self.done = threading.Event()

    def on_message(self, frame: Any) -> None:
        destination = frame.headers["destination"]
        self.messages.append((destination, json.loads(frame.body)))
        print("  <- %-40s %s" % (destination, frame.body), flush=True)
        if not destination.endswith(("STARTED", "AUTOREDUCE.0")):
            self.done.set()


def build_tree(root: str) -> Dict[str, Any]:
    shared = os.path.join(root, "SNS", "DEMO", "shared", "autoreduce")
    nexus = os.path.join(root, "SNS", "DEMO", "IPTS-1234", "nexus")
    os.makedirs(shared, exist_ok=True)
    os.makedirs(nexus, exist_ok=True)
    with open(os.path.join(shared, "reduce_DEMO.py"), "w", encoding="utf-8") as handle:
        handle.write(REDUCE_SCRIPT)
    data_file = os.path.join(nexus, "DEMO_1234.nxs.h5")
    with open(data_file, "wb") as handle:
        handle.write(os.urandom(4096))
    return {"facility": "SNS", "instrument": "DEMO", "ipts": "IPTS-1234", "run_number": "1234",
            "data_file": data_file}


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=sorted(BROKERS), default="activemq",
                        help="the broker to run (default activemq: ActiveMQ Classic from Debian)")
    parser.add_argument("--keep", action="store_true", help="leave broker and agent running until Ctrl-C")
    args = parser.parse_args()
    title, module = BROKERS[args.broker]
    if not module.available():
        print("demo: %s is not installed; run `make deps`" % title)
        return 1
    workdir = tempfile.mkdtemp(prefix="postprocessing-demo-")
    data_root = os.path.join(workdir, "data")
    run = build_tree(data_root)
    port = 61613 if port_free(61613) else None
    broker = (artemis.LocalArtemis if args.broker == "artemis" else activemq.LocalActiveMQ)(
        os.path.join(workdir, "broker"), port=port)
    print("demo: starting %s (STOMP on 127.0.0.1:%d) in %s" % (title, broker.port, broker.workdir), flush=True)
    broker.start()
    config_path = os.path.join(workdir, "post_processing.conf")
    log_file = os.path.join(workdir, "postprocessing.log")
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump({"brokers": [["127.0.0.1", broker.port]], "amq_user": "icat", "amq_pwd": "icat",
                   "data_root": data_root, "log_file": log_file, "python_exec": sys.executable,
                   "journal_path": os.path.join(workdir, "journal.sqlite3"),
                   "heartbeat_interval_sec": 5, "allow_root": True}, handle, indent=1)
    agent = subprocess.Popen([sys.executable, "-m", "postprocessing", "--config", config_path, "run"])
    conn = stomp.Connection12([("127.0.0.1", broker.port)])
    listener = Listener()
    conn.set_listener("demo", listener)
    try:
        conn.connect("icat", "icat", wait=True)
        for i, name in enumerate(OUTCOME_QUEUES):
            conn.subscribe("/queue/" + name, id=str(i), ack="auto")
        conn.subscribe("/topic/SNS.COMMON.STATUS.AUTOREDUCE.0", id="hb", ack="auto")
        time.sleep(2.0)
        print("demo: agent pid %d; sending run to /queue/REDUCTION.DATA_READY:\n  -> %s"
              % (agent.pid, json.dumps(run)), flush=True)
        conn.send("/queue/REDUCTION.DATA_READY", json.dumps(run), headers={"persistent": "true"})
        if not listener.done.wait(60):
            print("demo: no outcome within 60 s; see %s" % log_file)
            return 1
        time.sleep(0.5)
        out_dir = os.path.join(data_root, "SNS", "DEMO", "IPTS-1234", "shared", "autoreduce")
        print("demo: output directory %s:" % out_dir)
        for dirpath, _dirs, files in os.walk(out_dir):
            for name in sorted(files):
                print("  %s" % os.path.join(dirpath, name))
        print("demo: agent log %s" % log_file)
        if args.keep:
            print("demo: broker and agent keep running; Ctrl-C stops them", flush=True)
            signal.pause()
        return 0 if listener.messages and "COMPLETE" in listener.messages[-1][0] else 1
    except KeyboardInterrupt:
        return 0
    finally:
        conn.disconnect()
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        broker.stop()
        print("demo: stopped agent (exit %s) and broker; files are kept in %s" % (agent.returncode, workdir))


if __name__ == "__main__":
    sys.exit(main())
