"""A small real HTTP server standing in for a Calvera or INTERSECT ingest endpoint.

Every POST is recorded (path and JSON body) and answered with ``status`` and ``text``,
after ``delay`` seconds; a test may change them at any time.
"""

import dataclasses
import http.server
import json
import threading
import time
from typing import Any, List


@dataclasses.dataclass(frozen=True)
class Posted:
    path: str
    body: Any


class IngestServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.status = 200
        self.text = "OK"
        #: Seconds to wait, after recording a POST, before answering it.
        self.delay = 0.0
        self._lock = threading.Lock()
        self._posted: List[Posted] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ingest-server", daemon=True)

    @property
    def url(self) -> str:
        return "http://%s:%d/ingest" % self._httpd.server_address[:2]

    def start(self) -> "IngestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    @property
    def posted(self) -> List[Posted]:
        with self._lock:
            return list(self._posted)

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        with self._lock:
            self._posted.append(Posted(handler.path, body))
            status, text, delay = self.status, self.text, self.delay
        if delay:
            time.sleep(delay)
        data = text.encode("utf-8")
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (time limit and cancel tests)
