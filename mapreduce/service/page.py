"""The standing cluster's web view: its queue and finished jobs (read-only, no authentication).

Routes: ``/`` (the page; it reloads itself every second) and ``/cluster.json``. The running
job's own live page (its workers, attempts, counters) is served by its coordinator on the next
port. The service's loop publishes; the server's threads only read what was published last.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict

from mapreduce.net.pages import PageServer, Reply
from mapreduce.wire.messages import JobInfo

PUBLISH_EVERY = 0.25  # seconds: the page reloads every second
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class ClusterPage:
    def __init__(self, host: str, port: int, job_page_port: int):
        self.job_page_port = job_page_port
        self._page, self._json = b"", b"{}"
        self._published = float("-inf")
        self._pages = PageServer(host, port, self._route, name="cluster-page")
        self.url = self._pages.url

    def _route(self, path: str) -> Reply:
        if path == "/":
            return Reply(200, "text/html; charset=utf-8", self._page, {"Content-Security-Policy": _CSP})
        if path == "/cluster.json":
            return Reply(200, "application/json", self._json)
        return Reply(404, "text/plain; charset=utf-8", b"not found: try / or /cluster.json\n")

    def publish(self, jobs: list[JobInfo], stopping: bool, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published < PUBLISH_EVERY:
            return
        self._published = now
        data = {"stopping": stopping, "jobs": [asdict(job) | {"state": job.state.value} for job in jobs]}
        self._page = _render(jobs, stopping, self.job_page_port).encode()  # (each one assignment: a reader
        self._json = json.dumps(data).encode()  # sees an old or a new page, never half of one)

    def close(self) -> None:
        self._pages.close()


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
