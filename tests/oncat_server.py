"""A small real HTTP server standing in for ONCat, for the endpoints pyoncat calls.

- ``POST /api/datafiles/<path>/ingest``: 200 with the datafile (``location``, ``facility``,
  ``instrument``, ``experiment``, ``indexed.run_number``, plus any extra fields a test
  set for that path, such as imaging ``metadata``); 404 if the file does not exist.
- ``POST /api/reductions/<path>/ingest``: 200 with the reduction; 404 if the file does not exist.
- A file in ``refused`` gets 400, which pyoncat reports as "Bad request".
- ``POST /api/datafiles/batch`` with a JSON list of paths: 200.
- Every request without ``Authorization: Bearer <token>`` gets 403.

Every request is recorded, in order, for the tests to check.
"""

import dataclasses
import http.server
import json
import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple
from urllib.parse import unquote, urlsplit

_INGEST = re.compile(r"/api/(datafiles|reductions)/(.+)/ingest")
_RUN = re.compile(r"_([0-9]+)")


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorization: Optional[str]
    body: Any

    @property
    def target(self) -> Optional[str]:
        """The file an ingest request names (``/api/.../<file>/ingest``)."""
        match = _INGEST.fullmatch(self.path)
        return "/" + match.group(2) if match else None


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class ONCatServer:
    def __init__(self, data_root: str, token: str = "test-oncat-token", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.data_root = data_root
        self.token = token
        #: Extra datafile fields by file path (for example imaging metadata), merged in.
        self.extra: Dict[str, Dict[str, Any]] = {}
        #: Files this ONCat does not know (404) although they exist.
        self.unknown: Set[str] = set()
        #: Files this ONCat refuses to ingest (400), as SNS's stand-in refuses a bad path.
        self.refused: Set[str] = set()
        #: Seconds to wait before answering (to test client timeouts).
        self.delay = 0.0
        self._lock = threading.Lock()
        self._requests: List[Request] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="oncat-server", daemon=True)

    @property
    def url(self) -> str:
        return "http://%s:%d" % self._httpd.server_address[:2]

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (for docker-compose's stand-in service)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def start(self) -> "ONCatServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    # -- what tests look at --------------------------------------------------------------
    @property
    def requests(self) -> List[Request]:
        with self._lock:
            return list(self._requests)

    def ingested(self, kind: str = "datafiles") -> List[str]:
        """The files ingested with ``kind`` (``datafiles`` or ``reductions``), in order."""
        return [r.target for r in self.requests
                if r.target is not None and r.path.startswith("/api/%s/" % kind)]

    def batches(self) -> List[List[str]]:
        return [r.body for r in self.requests if r.path == "/api/datafiles/batch"]

    # -- serving -------------------------------------------------------------------------
    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        request = Request(handler.command, unquote(urlsplit(handler.path).path),
                          handler.headers.get("Authorization"), body)
        with self._lock:
            self._requests.append(request)
        if self.delay:
            time.sleep(self.delay)
        status, answer = self._answer(request)
        data = json.dumps(answer).encode("utf-8")
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout tests)

    def _answer(self, request: Request) -> Tuple[int, Any]:
        if request.authorization != "Bearer " + self.token:
            return 403, {"message": "Forbidden: no valid API token"}
        if request.method != "POST":
            return 405, {"message": "Method not allowed"}
        if request.path == "/api/datafiles/batch":
            if not isinstance(request.body, list) or not all(isinstance(p, str) for p in request.body):
                return 400, {"message": "Expected a JSON list of paths"}
            return 200, [{"object": "datafile", "location": p} for p in request.body]
        target = request.target
        if target is None:
            return 404, {"message": "No such endpoint: %s" % request.path}
        if target in self.refused:
            return 400, {"message": "Invalid path format: %s" % target}
        if target in self.unknown or not os.path.isfile(target):
            return 404, {"message": "No such file: %s" % target}
        if request.path.startswith("/api/reductions/"):
            return 200, {"object": "reduction", "location": target}
        return 200, self._datafile(target)

    def _datafile(self, path: str) -> Dict[str, Any]:
        """What ONCat knows of a file under ``<data_root>/<FACILITY>/<INST>/<IPTS>/...``."""
        parts = os.path.relpath(path, self.data_root).split(os.sep)
        run = _RUN.search(os.path.basename(path))
        content: Dict[str, Any] = {
            "object": "datafile", "location": path, "facility": parts[0], "instrument": parts[1],
            "experiment": parts[2], "indexed": {"run_number": int(run.group(1)) if run else None},
            "metadata": {"entry": {"title": "stand-in"}},
        }
        return _merge(content, self.extra.get(path, {}))
