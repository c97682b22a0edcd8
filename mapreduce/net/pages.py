"""A small read-only web server in a daemon thread, for the status pages (a job's, a cluster's).

GET and HEAD get what the page's ``route(path)`` returns; any other method gets 405. The
route only reads what its owner last published, so serving never touches a loop's state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    code: int
    kind: str  # the Content-Type
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[str], Reply]  # a path (without query or fragment) -> what to send


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "mapreduce-status"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # any other method: read-only, so 405 (not 501)
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        message = b"method not allowed: this server is read-only\n"
        self._reply(Reply(405, "text/plain; charset=utf-8", message, {"Allow": "GET, HEAD"}))

    def _serve(self, body: bool) -> None:
        self.server.pages.last_request = time.monotonic()
        self._reply(self.server.pages.route(self.path.split("?", 1)[0].split("#", 1)[0]), body)

    def _reply(self, reply: Reply, body: bool = True) -> None:
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.kind)
        self.send_header("Content-Length", str(len(reply.data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(reply.data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    pages: PageServer


class PageServer:
    """Serves ``route`` on ``host:port`` (0: any free port) until closed."""

    def __init__(self, host: str, port: int, route: Route, name: str = "pages"):
        self.route = route
        self.last_request = float("-inf")  # monotonic time of the last request served
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.pages = self
        bound_host, bound_port = self._httpd.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        self.port: int = bound_port
        self.url = f"http://{shown}:{bound_port}/"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
