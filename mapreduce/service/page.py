"""The standing cluster's web view: its queue and finished jobs (read-only, no authentication).

Routes: ``/`` (the page; it reloads itself every second) and ``/cluster.json``. The running
job's own live page (its workers, attempts, counters) is served by its coordinator on the next
port. The service's loop publishes; the server threads only read what was published last.
"""

from __future__ import annotations

import html
import json
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mapreduce.wire.messages import JobInfo

PUBLISH_EVERY = 0.25  # seconds: the page reloads every second


class ClusterPage:
    def __init__(self, host: str, port: int, job_page_port: int):
        self._lock = threading.Lock()
        self._page, self._json = b"", b"{}"
        self._published = 0.0
        self.job_page_port = job_page_port
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with page._lock:
                    routes = {"/": (page._page, "text/html"), "/cluster.json": (page._json, "application/json")}
                body, kind = routes.get(self.path.split("?")[0], (b"not found\n", "text/plain"))
                self.send_response(200 if self.path.split("?")[0] in routes else 404)
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="cluster-page", daemon=True)
        self._thread.start()

    def publish(self, jobs: list[JobInfo], stopping: bool, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published < PUBLISH_EVERY:
            return
        self._published = now
        data = {"stopping": stopping, "jobs": [asdict(job) | {"state": job.state.value} for job in jobs]}
        page = _render(jobs, stopping, self.job_page_port).encode()
        with self._lock:
            self._page, self._json = page, json.dumps(data).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _render(jobs: list[JobInfo], stopping: bool, job_page_port: int) -> str:
    now = time.time()
    rows = []
    for job in reversed(jobs):  # newest first
        seconds = (job.finished or now) - job.started if job.started else 0.0
        detail = job.message if job.state.over else job.output
        rows.append(
            f"<tr class={job.state.value}><td>{html.escape(job.job_id)}</td><td>{job.state.value}</td>"
            f"<td>{time.strftime('%H:%M:%S', time.localtime(job.submitted))}</td><td>{seconds:.2f}</td>"
            f"<td>{html.escape(job.app)}</td><td>{html.escape(detail)}</td></tr>"
        )
    queued = sum(job.state.value == "queued" for job in jobs)
    heading = f"{len(jobs)} jobs, {queued} queued" + (" &middot; <b>stopping</b>" if stopping else "")
    return (
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=1>"
        "<title>mapreduce cluster</title><style>body{font:14px sans-serif;margin:1em}"
        "td,th{padding:2px 8px;text-align:left}.failed td{color:#b00}.cancelled td{color:#777}"
        ".running td{font-weight:bold}</style></head><body>"
        f"<h1>mapreduce cluster</h1><p>{heading}; the running job's live page (its workers, attempts, "
        f"counters) is on port {job_page_port} of this host.</p><table><tr><th>job</th><th>state</th>"
        "<th>submitted</th><th>seconds</th><th>app</th><th>output, or why it ended</th></tr>"
        f"{''.join(rows)}</table></body></html>"
    )
