"""A live view of a running job: a JSON snapshot, a small read-only web page, ``mapreduce status``.

The coordinator's loop hands its observer a frozen view of the job
(``mapreduce.coordinator.view.JobView``) and the events since the last call; a
``StatusBoard`` is such an observer: it keeps the recent events, turns the view into
a JSON snapshot (at most a few times a second) and publishes it to the web server,
which only reads the snapshot last published. Routes: ``/`` (the page, rendered here,
showing the state at load time; without JavaScript it reloads itself), ``/fragment``
(the page's content alone: the page's script fetches it every second and swaps it in) and
``/status.json``. Anything else is 404; a method other than GET or HEAD is 405.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from mapreduce.coordinator.view import AttemptView, JobView, WorkerView
from mapreduce.net.pages import PageServer, Reply
from mapreduce.wire.events import AttemptState, Event, JobFinished

log = logging.getLogger(__name__)

KEEP_EVENTS = 50
ERROR_CHARS = 300


# ---- the snapshot ------------------------------------------------------------


def _first_line(text: Any) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


def _attempt(a: AttemptView) -> dict:
    info = {
        "id": a.id,
        "phase": a.phase.value,
        "task": a.task,
        "worker": a.worker,
        "worker_name": a.worker_name,
        "state": a.state.value,
        "backup": a.backup,
        "seconds": round(a.seconds, 3),
    }
    if a.state is AttemptState.FAILED:
        info["error"] = _first_line(a.detail)
    elif a.state is not AttemptState.RUNNING and a.detail:
        info["why"] = _first_line(a.detail)
    if a.status:
        info["status"] = a.status
    return info


def _worker(w: WorkerView) -> dict:
    return {
        "id": w.id,
        "name": w.name,
        "host": w.host,
        "pid": w.pid,
        "state": w.state.value,
        "suspect": w.suspect,
        "heartbeat_age": round(w.heartbeat_age, 3),
        "attempt": _attempt(w.attempt) if w.attempt is not None else None,
    }


def snapshot(view: JobView, events: Iterable[Event] = ()) -> dict:
    """A JSON-able picture of a job's view. ``events``: the recent events to show, oldest
    first (shown newest first, timed from the job's start)."""
    elapsed = view.elapsed
    return {
        "job": dataclasses.asdict(view.job),
        "phase": view.phase.value,
        "step": view.step,  # a pipeline's step running now (1-based), of "steps"
        "steps": view.steps,
        "failure": view.failure,
        "elapsed": round(elapsed, 3),
        "maps": dataclasses.asdict(view.maps),
        "reduces": dataclasses.asdict(view.reduces),
        "counters": view.tally.as_dict(),
        # The job's counters (the app's and the framework's), of successful attempts only.
        "job_counters": {f"{g}.{c}": v for (g, c), v in view.tally.counters.sorted_items()},
        "throughput": {
            "input_bytes_done": view.input_done,
            "bytes_per_second": round(view.input_done / elapsed, 1) if elapsed > 0 else 0.0,
        },
        "workers_live": view.workers_live,
        "workers_total": view.workers_total,
        "workers": [_worker(w) for w in view.workers],
        "attempts": [_attempt(a) for a in view.attempts],
        "events": [
            {"t": round(e.t - view.started, 3), "event": e.kind.value, **e.fields()} for e in reversed(list(events))
        ],
    }


class StatusBoard:
    """The coordinator's observer for the status page: keeps the recent events and publishes
    snapshots, at most every ``every`` seconds (and at once when the job finishes)."""

    def __init__(self, server: StatusServer | None = None, every: float = 0.25, keep_events: int = KEEP_EVENTS):
        self.server = server
        self.every = every
        self.events: deque[Event] = deque(maxlen=keep_events)
        self.current: dict | None = None
        self._built = float("-inf")

    def update(self, view: JobView, events: Sequence[Event] = (), force: bool = False) -> dict | None:
        """Take new events; rebuild and publish the snapshot if ``every`` seconds have passed
        (or the job just finished, or ``force``). Returns the new snapshot, if one was built."""
        self.events.extend(events)
        force = force or any(isinstance(e, JobFinished) for e in events)
        if not force and view.now - self._built < self.every:
            return None
        self._built = view.now
        snap = snapshot(view, self.events)
        snap["updated"] = round(time.time(), 3)
        self.current = snap
        if self.server is not None:
            self.server.publish(snap)
        return snap

    __call__ = update  # an observer: Coordinator(observe=board)


# ---- formatting shared by the page and the terminal ----------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def worker_state(w: Mapping[str, Any]) -> tuple[str, str]:
    """(text, colour class) of a worker's state."""
    state = w["state"]
    if w.get("suspect") and state in ("idle", "busy", "draining"):
        return f"{state} (suspect)", "suspect"
    return state, {"idle": "ok", "busy": "ok", "dead": "dead"}.get(state, "gone")


def task_text(a: Mapping[str, Any] | None) -> str:
    if not a:
        return ""
    text = f"{a['phase']} {a['task']} (attempt {a['id']}{', backup' if a.get('backup') else ''})"
    return f"{text}: {a['status']}" if a.get("status") else text


def event_text(e: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "event") and v is not None)


def _counter(name: str, value: Any) -> str:
    return human_bytes(value) if name.endswith(("_fetched", "_pulled")) else str(value)


def _seconds(x: float | None) -> str:
    return "" if x is None else f"{x:.1f} s"


# ---- the page -------------------------------------------------------------------
#
# The page is rendered here, in Python, and only here: ``/`` is the whole page, ``/fragment``
# its <main> alone, which the page's small script fetches every second and swaps in.
# Everything a worker sends is escaped on the way in; without JavaScript the page reloads.

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.2em 0 .4em}
.meta{color:#555}.phase{font-weight:bold;padding:.1em .5em;border-radius:.3em;background:#ddd}
.phase.done{background:#c8e6c9}.phase.failed{background:#ffcdd2}
.phase.maps,.phase.reduces{background:#bbdefb}
.bar{display:flex;gap:1em;align-items:center;margin:.3em 0}.bar span{width:9em}
.bar progress{width:24em;height:1.1em}.bar small{color:#555}
.failure{background:#ffebee;border:1px solid #e57373;padding:.5em;white-space:pre-wrap}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:.2em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right}
#counters{display:flex;flex-wrap:wrap;gap:.4em}#counters div{background:#fff;border:1px solid #ddd;padding:.2em .6em}
.state{font-weight:bold;padding:0 .4em;border-radius:.3em;color:#fff}
.state.ok{background:#2e7d32}.state.suspect{background:#f9a825;color:#222}
.state.dead{background:#c62828}.state.gone{background:#9e9e9e}
.out-succeeded{color:#2e7d32}.out-failed{color:#c62828}.out-lost{color:#c62828}.out-running{color:#1565c0}
.out-cancelled,.out-superseded{color:#777}#conn{color:#c62828}
"""

# Fetches the server-rendered <main> every second and swaps it in: no HTML is built here.
_SCRIPT = r"""
(function () {
  "use strict";
  var main = document.getElementById("main"), conn = document.getElementById("conn"), count = 0;
  function poll() {
    fetch("fragment", {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (fragment) {
      main.innerHTML = fragment;
      conn.textContent = "";
      document.body.setAttribute("data-refreshed", String(++count));
    }).catch(function (e) {
      conn.textContent = "status unavailable (" + e.message + "), retrying";
    }).then(function () { setTimeout(poll, 1000); });
  }
  setTimeout(poll, 1000);
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only the page's own script and style run; it may fetch only from this server.
_CSP = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_FRAGMENT_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

_STARTING = "<h1>mapreduce</h1><p>No status yet: the job is starting.</p>"


def _td(value: Any, cls: str = "") -> str:
    attribute = f' class="{cls}"' if cls else ""
    return f"<td{attribute}>{html.escape(str(value))}</td>"


def _bar(name: str, p: Mapping[str, int]) -> str:
    return (
        f'<div class="bar"><span>{name} {p["done"]}/{p["total"]}</span>'
        f'<progress max="{max(p["total"], 1)}" value="{p["done"]}"></progress>'
        f"<small>running {p['running']} \u00b7 pending {p['pending']}</small></div>"
    )


def _heading(s: Mapping[str, Any]) -> str:
    e = html.escape
    j, phase = s["job"], e(s["phase"])
    step = f"step {s['step']} of {s['steps']} \u00b7 " if s.get("steps", 1) > 1 else ""
    return (
        f"<h1>mapreduce: {e(str(j.get('app', '')))}</h1>"
        f'<p class="meta"><span id="phase" class="phase {phase}">{phase}</span> {step}'
        f"job {e(str(j.get('job_id', '')))} \u00b7 elapsed {_seconds(s['elapsed'])} \u00b7 "
        f"{j.get('n_map')} maps, {j.get('n_reduce')} reduces \u00b7 "
        f"{j.get('inputs')} input files, {human_bytes(j.get('input_bytes') or 0)} \u00b7 "
        f"output {e(str(j.get('output', '')))}</p>"
    )


def _workers(s: Mapping[str, Any]) -> str:
    h = [
        f'<h2>Workers ({s["workers_live"]} live of {s["workers_total"]})</h2><table id="workers">'
        "<tr><th>id</th><th>name</th><th>host</th><th>pid</th><th>state</th><th>last heartbeat</th><th>task</th></tr>"
    ]
    for w in s["workers"]:
        text, cls = worker_state(w)
        h.append(
            f'<tr id="worker-{html.escape(str(w["id"]))}">{_td(w["id"], "num")}{_td(w["name"])}{_td(w["host"])}'
            f'{_td(w["pid"], "num")}<td><span class="state {cls}">{html.escape(text)}</span></td>'
            f"{_td(_seconds(w['heartbeat_age']) + ' ago', 'num')}{_td(task_text(w['attempt']))}</tr>"
        )
    return "".join(h) + "</table>"


def _attempts(s: Mapping[str, Any]) -> str:
    h = [
        '<h2>Recent attempts</h2><table id="attempts"><tr><th>attempt</th><th>task</th><th>worker</th>'
        "<th>outcome</th><th>time</th><th>detail</th></tr>"
    ]
    for a in s["attempts"]:
        h.append(
            "<tr>"
            + _td(a["id"], "num")
            + _td(f"{a['phase']} {a['task']}" + (" (backup)" if a["backup"] else ""))
            + _td(f"{a['worker']} {a['worker_name']}")
            + _td(a["state"], "out-" + html.escape(a["state"]))
            + _td(_seconds(a["seconds"]), "num")
            + _td(a.get("error") or a.get("why") or a.get("status") or "")
            + "</tr>"
        )
    return "".join(h) + "</table>"


def _events(s: Mapping[str, Any]) -> str:
    h = ['<h2>Recent events</h2><table id="events"><tr><th>time</th><th>event</th><th>details</th></tr>']
    for ev in s["events"]:
        h.append("<tr>" + _td("+" + _seconds(ev["t"]), "num") + _td(ev["event"]) + _td(event_text(ev)) + "</tr>")
    return "".join(h) + "</table>"


def render_main(s: Mapping[str, Any] | None) -> str:
    """The page's content for one snapshot (None: none yet): what ``/`` shows in its <main>
    and ``/fragment`` serves for the page's script to swap in."""
    if s is None:
        return _STARTING
    e = html.escape
    h = [_heading(s)]
    if s.get("failure"):
        h.append(f'<pre class="failure">{e(s["failure"])}</pre>')
    h.append(_bar("maps", s["maps"]) + _bar("reduces", s["reduces"]))
    t = s["throughput"]
    h.append(
        f'<p id="throughput">input done {human_bytes(t["input_bytes_done"])} \u00b7 '
        f"{human_bytes(t['bytes_per_second'])}/s</p>"
    )
    counters = "".join(f"<div><b>{e(_counter(k, v))}</b> {e(k)}</div>" for k, v in s["counters"].items())
    h.append(f'<h2>Counters</h2><div id="counters">{counters}</div>')
    job_counters = "".join(f"<tr><td>{e(k)}</td><td class=num>{v}</td></tr>" for k, v in s["job_counters"].items())
    if job_counters:
        h.append(f'<h2>Job counters</h2><table id="job-counters">{job_counters}</table>')
    h += [_workers(s), _attempts(s), _events(s)]
    return "".join(h)


def render_page(s: Mapping[str, Any] | None) -> str:
    title = f"mapreduce: {s['job'].get('app', '')} ({s['phase']})" if s is not None else "mapreduce"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{html.escape(title)}</title><noscript><meta http-equiv="refresh" content="2"></noscript>'
        f"<style>{_STYLE}</style></head>\n"
        f'<body><p id="conn"></p><main id="main">{render_main(s)}</main>\n<script>{_SCRIPT}</script></body></html>\n'
    )


# ---- the server -----------------------------------------------------------------


class StatusServer:
    """The status page and JSON on ``host:port`` (0: any free port), served by a daemon thread.
    ``publish`` swaps in a new snapshot; the server only ever reads the one last published."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._current: tuple[dict | None, bytes | None] = (None, None)
        self._pages = PageServer(host, port, self._route, name="status-server")
        self.port, self.url = self._pages.port, self._pages.url

    def _route(self, path: str) -> Reply:
        snap, encoded = self.current()
        if path == "/status.json":
            if encoded is None:
                return Reply(503, "application/json", b'{"error": "no status yet"}\n')
            return Reply(200, "application/json", encoded)
        if path == "/":
            return Reply(200, "text/html; charset=utf-8", render_page(snap).encode(), {"Content-Security-Policy": _CSP})
        if path == "/fragment":
            fragment = render_main(snap).encode("utf-8")
            return Reply(200, "text/html; charset=utf-8", fragment, {"Content-Security-Policy": _FRAGMENT_CSP})
        return Reply(404, "text/plain; charset=utf-8", b"not found: try /, /fragment or /status.json\n")

    def publish(self, snap: dict) -> None:
        encoded = (json.dumps(snap, default=str, separators=(",", ":")) + "\n").encode("utf-8")
        self._current = (snap, encoded)  # one assignment: a reader sees the old pair or the new one

    def current(self) -> tuple[dict | None, bytes | None]:
        return self._current

    def close(self, linger: float = 0.0) -> None:
        """Stop serving. With ``linger``, first serve up to that many seconds more while clients
        still poll (one asked in the last 1.5 s), so a watcher sees the final snapshot."""
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and time.monotonic() - self._pages.last_request < 1.5:
            time.sleep(0.05)
        self._pages.close()

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- the terminal ---------------------------------------------------------------


def status_url(address: str) -> str:
    """``http://HOST:PORT``, ``HOST:PORT`` or a page URL -> the URL of status.json."""
    url = address.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    if url.endswith("/status.json"):
        return url
    return url + "/status.json"


def fetch(address: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(status_url(address), timeout=timeout) as reply:
        return json.loads(reply.read().decode("utf-8"))


def format_summary(s: Mapping[str, Any]) -> str:
    j, c, t = s["job"], s["counters"], s["throughput"]
    m, r = s["maps"], s["reduces"]
    lines = [
        f"{j.get('app', '?')} (job {j.get('job_id', '?')}): {s['phase']}, {s['elapsed']:.1f} s; "
        f"output {j.get('output', '?')}",
        f"maps     {m['done']}/{m['total']} done, {m['running']} running, {m['pending']} pending",
        f"reduces  {r['done']}/{r['total']} done, {r['running']} running, {r['pending']} pending",
        f"input    {human_bytes(t['input_bytes_done'])} of {human_bytes(j.get('input_bytes') or 0)} read, "
        f"{human_bytes(t['bytes_per_second'])}/s",
    ]
    if s.get("failure"):
        lines.append("failure: " + s["failure"])
    lines.append(f"workers  {s['workers_live']} live of {s['workers_total']}")
    rows = [("id", "name", "host", "pid", "state", "heartbeat", "task")]
    for w in s["workers"]:
        rows.append(
            (
                str(w["id"]),
                w["name"],
                w["host"],
                str(w["pid"]),
                worker_state(w)[0],
                f"{w['heartbeat_age']:.1f} s ago",
                task_text(w["attempt"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    shown = {k: v for k, v in c.items() if k not in ("maps_done", "reduces_done")}
    lines.append("counters " + "  ".join(f"{k} {_counter(k, v)}" for k, v in shown.items()))
    return "\n".join(lines)


@click.command("status")
@click.argument("address", metavar="URL")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status JSON.")
@click.option(
    "--watch", is_flag=True, help="Repeat every second until the job is done or failed (exit 0 done, 1 failed)."
)
def status(address: str, as_json: bool, watch: bool) -> None:
    """Show a running job's status from its coordinator's status server at URL
    (http://HOST:PORT or HOST:PORT, see --status-port)."""
    seen = False
    while True:
        try:
            snap = fetch(address)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            what = "lost the status server at" if seen else "cannot reach the status server at"
            click.echo(f"error: {what} {status_url(address)}: {reason}", err=True)
            sys.exit(2)
        seen = True
        over = snap.get("phase") in ("done", "failed")
        if as_json:
            click.echo(json.dumps(snap, indent=None if watch else 2))
        else:
            if watch and sys.stdout.isatty():
                click.echo("\x1b[H\x1b[2J", nl=False)
            click.echo(format_summary(snap) + ("\n" if watch and not sys.stdout.isatty() else ""))
        if not watch:
            return
        if over:
            sys.exit(0 if snap["phase"] == "done" else 1)
        time.sleep(1.0)


# ---- a headless browser, for screenshots and tests --------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """A Chromium-like browser: $MAPREDUCE_BROWSER, else the first of BROWSERS on PATH."""
    given = os.environ.get("MAPREDUCE_BROWSER")
    if given:
        return shutil.which(given)
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def headless(
    url: str, *args: str, browser: str | None = None, wait_ms: int = 3000, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run a headless browser on url with args (e.g. --dump-dom); scripts get wait_ms of virtual time."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found: install chromium or set MAPREDUCE_BROWSER")
    with tempfile.TemporaryDirectory(prefix="mapreduce-browser-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={wait_ms}",
            *args,
            url,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def dump_dom(url: str, wait_ms: int = 3000, browser: str | None = None) -> str:
    """The page's DOM after its scripts ran for wait_ms of virtual time."""
    result = headless(url, "--dump-dom", browser=browser, wait_ms=wait_ms)
    if result.returncode != 0 or "<html" not in result.stdout:
        raise RuntimeError(f"the browser exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def screenshot(
    url: str, path: str | Path, width: int = 1200, height: int = 900, wait_ms: int = 2000, browser: str | None = None
) -> Path:
    """Save a PNG of the page at url (e.g. docs/status.png)."""
    path = Path(path).resolve()
    result = headless(url, f"--screenshot={path}", f"--window-size={width},{height}", browser=browser, wait_ms=wait_ms)
    if result.returncode != 0 or not path.exists():
        raise RuntimeError(f"no screenshot: the browser exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return path
