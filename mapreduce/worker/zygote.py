"""A worker that stays (`mapreduce worker --stay`) serves each job in a process of its own,
forked from the process the user started.

That process (the zygote) stays single-threaded and opens no socket: it has imported what a
worker needs, forks a worker for the next job, waits for it, and forks another. A fork of a
warm interpreter starts in milliseconds, where a fresh interpreter takes a third of a second;
and each job still gets a clean process, so nothing of one job's code, module state, threads
or memory reaches the next. A job's worker process that crashes (a segfault, `os._exit` in
user code) is replaced at once: the coordinator sees one worker lost, the zygote stays.
Signals: SIGTERM and SIGINT are passed to the running worker (which drains) and the zygote
leaves with it; a zygote killed outright takes its worker with it (the parent-death signal).
"""

from __future__ import annotations

import ctypes  # noqa: F401  (loaded before any fork: a forked worker sets its parent-death signal at once)
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

from mapreduce.guardian import die_with_parent

log = logging.getLogger(__name__)

SERVE_AGAIN = 75  # a job's worker is done with its job (or lost its coordinator): fork the next
RESTART = 76  # a job's worker whose user code would not stop: fork a fresh one
RETRY_LATER = 77  # a job's worker that could not reach its coordinator: fork another after a pause
PASSED_ON = (signal.SIGTERM, signal.SIGINT)
FIRST_RETRY = 0.05  # seconds before a worker whose handshake failed tries again, doubling up to crash_pause


def job_after_job(serve_one: Callable[[], int], crash_pause: float) -> int:
    """Fork a worker process for each job, running ``serve_one`` (its exit status), until one
    leaves for good (drained, dismissed, refused); return that status. ``crash_pause``: the
    shortest time between two workers that crashed, so a worker that cannot start does not
    spin. ``serve_one`` must unblock PASSED_ON once its own handlers are in place."""
    child = 0
    leaving = False

    def pass_on(signum: int, frame) -> None:
        nonlocal leaving
        leaving = True
        if child:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    previous = {signum: signal.signal(signum, pass_on) for signum in PASSED_ON}
    zygote = os.getpid()
    retry_pause = FIRST_RETRY
    code = 0
    while not leaving:
        # Held until the child has its handlers: a SIGTERM in between waits, then drains it.
        signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _serve_in_child(serve_one, previous, zygote)
        child = pid
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PASSED_ON)  # a signal held meanwhile reaches the child
        _, status = os.waitpid(pid, 0)
        child = 0
        code = os.waitstatus_to_exitcode(status)
        if code in (SERVE_AGAIN, RESTART, RETRY_LATER):
            if code == RETRY_LATER:  # soon (a coordinator that was closing), then less often (wrong keys)
                time.sleep(max(0.0, retry_pause - (time.monotonic() - started)))
                retry_pause = min(2 * retry_pause, crash_pause)
            else:
                retry_pause = FIRST_RETRY
            code = 0
            continue
        if code >= 0:
            return code  # left for good: drained, dismissed by a stopping cluster, refused, failed
        if not leaving:
            log.error("this host's worker process died (signal %d): starting a fresh one", -code)
            time.sleep(max(0.0, crash_pause - (time.monotonic() - started)))
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    return code if code >= 0 else 0


def _serve_in_child(serve_one: Callable[[], int], handlers: dict, zygote: int) -> None:
    """The forked worker: never returns into the zygote's loop."""
    code = 1
    try:
        die_with_parent()
        if os.getppid() != zygote:  # the zygote died before the signal was set: nothing would end this one
            os._exit(1)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        code = serve_one()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
