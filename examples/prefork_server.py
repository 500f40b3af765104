"""A pre-forking HTTP server: the parent loads its data, then forks worker processes that serve from it.

    python examples/prefork_server.py PORT [WORKERS]

The parent builds a lookup table (about 24 MiB of Python objects), calls `gc.freeze()` so the collector
never writes to those objects again, and forks the workers, which share its pages copy-on-write. Each
request makes a worker look up one key. It prints "serving on PORT" once every worker is accepting.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

TABLE = {f"key-{index}": f"value-{index}" * 4 for index in range(150_000)}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = TABLE.get(f"key-{len(self.path)}", "none").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3
    server = HTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.server_bind()
    server.server_activate()
    gc.freeze()  # keep the collector from touching (and so copying) the parent's objects in the workers
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            server.serve_forever()
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"serving on {port}", flush=True)
    while True:
        os.wait()  # a worker that dies is not replaced: the test would see it exit


if __name__ == "__main__":
    main()
