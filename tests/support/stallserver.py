"""An HTTP server that never finishes an answer: headers, then one byte now and then.

A client's read timeout (the longest wait for the next byte) never fires, so only a limit
on the whole request, or on the job, ends the wait.  Stands in for a stalled ONCat."""

import socket
import threading
import time
from typing import List


class StallServer:
    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            self.requests += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not self._stop.is_set():
                conn.sendall(b" ")
                time.sleep(self.interval)
        except OSError:
            return

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._conns:
            conn.close()
