"""The service's job queue: a pure state machine, `now` passed in, no sockets, no processes.

Jobs run one at a time, first in first out. A queued job cancelled never runs; a running one
is stopped by the service (its coordinator process interrupted) and ends CANCELLED when that
process is gone. Stopping the cluster cancels the queue and refuses new jobs; the running job
finishes unless the stop asks to cancel it too.

The service journals each change (the records below) before it acts on it or answers, and
rebuilds the queue from them on start (``restore``): a job that was running when the service
died is queued again, first, to run again in the same folder; ``compacted`` gives the few
records that rebuild the queue as it is now.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import PurePath

from mapreduce.errors import ProtocolError
from mapreduce.journal import record
from mapreduce.wire.messages import JobInfo, JobState, SubmitJob, from_plain, to_plain

KEEP_FINISHED = 1000  # finished jobs remembered for `mapreduce jobs` (their folders stay on disk)


class Cancelling(enum.Enum):
    DEQUEUED = "dequeued"  # it was queued: cancelled at once
    STOP_RUNNING = "stop running"  # the service must interrupt its coordinator
    UNDER_WAY = "under way"  # asked before: its coordinator is cleaning up (a second signal would cut that short)
    ALREADY_OVER = "already over"


class BadRecord(ValueError):
    """A journal record that does not fit the queue it replays into."""


@dataclass
class QueuedJob:
    info: JobInfo
    request: SubmitJob
    cancel_asked: bool = False
    runs: int = 0  # its coordinator's starts: more than one after a service died while it ran
    output_created: bool = False  # its first run made its output folder (a cancel removes it then)


class JobQueue:
    def __init__(self, first_number: int = 1):
        self._jobs: OrderedDict[str, QueuedJob] = OrderedDict()
        self._next_number = first_number
        self.stopping = False
        self.cancel_running = False

    @classmethod
    def restore(cls, records: list[dict], first_number: int = 1) -> JobQueue:
        """The queue the journal's records describe. A job that was running is queued again
        (the oldest of the queued, so it runs first), its runs and output remembered."""
        q = cls(first_number)
        for r in records:
            try:
                q._replay(r)
            except (KeyError, TypeError, ValueError, ProtocolError) as exc:
                raise BadRecord(f"record {str(r)[:200]}: {exc}") from None
        for job in q._jobs.values():
            if job.info.state is JobState.RUNNING:
                job.info = replace(job.info, state=JobState.QUEUED)
        q._forget_old()
        return q

    def _replay(self, r: dict) -> None:
        kind = r["r"]
        if kind == "next":
            self._next_number = max(self._next_number, int(r["number"]))
        elif kind in ("submitted", "finished"):
            request = from_plain(SubmitJob, r["request"])
            if kind == "finished":
                info = from_plain(JobInfo, r["info"])
            else:
                info = JobInfo(
                    r["job"], JobState.QUEUED, request.app, request.output, float(r["at"]), events=r["events"]
                )
            if info.job_id in self._jobs or not _JOB_ID.fullmatch(info.job_id):
                raise ValueError(f"job id {info.job_id!r} twice or malformed")
            if kind == "finished" and not info.state.over:
                raise ValueError(f"{info.job_id} listed as finished but {info.state.value}")
            self._jobs[info.job_id] = QueuedJob(info, request)
            self._next_number = max(self._next_number, int(info.job_id[4:]) + 1)
        elif kind == "started":  # (on a running job too: run again after the service died)
            job = self._unfinished(r["job"])
            job.runs, job.output_created = int(r["run"]), bool(r["output_created"])
            job.info = replace(
                job.info, state=JobState.RUNNING, started=float(r["at"]), finished=0.0, events=r["events"]
            )
        elif kind == "cancel":
            self._unfinished(r["job"]).cancel_asked = True
        elif kind == "ended":
            job = self._unfinished(r["job"])
            job.info = replace(job.info, state=JobState(r["state"]), finished=float(r["at"]), message=str(r["message"]))
            if not job.info.state.over:
                raise ValueError(f"{job.info.job_id} ended {job.info.state.value}")
        else:
            raise ValueError(f"unknown kind {kind!r}")

    def _unfinished(self, job_id: str) -> QueuedJob:
        job = self._jobs[job_id]
        if job.info.state.over:
            raise ValueError(f"{job_id} is over already")
        return job

    def compacted(self) -> list[dict]:
        """The records that rebuild this queue: its jobs as they are now, and the next id."""
        records = [record("next", number=self._next_number)]
        for job in self._jobs.values():
            if job.info.state.over:
                records.append(finished(job))
                continue
            records.append(submitted(job))
            if job.runs:
                records.append(started(job))
            if job.cancel_asked:
                records.append(cancel_asked(job))
        return records

    def cancels_left_undone(self) -> list[str]:
        """Restored jobs whose cancel was asked while they ran, the service dying before
        their coordinator was gone: they must be cancelled (and their output removed)."""
        return [job_id for job_id, job in self._jobs.items() if job.cancel_asked and not job.info.state.over]

    def submit(self, now: float, request: SubmitJob, events_for) -> JobInfo:
        """Queue a job; ``events_for(job_id)`` names its event log."""
        if self.stopping:
            raise ValueError("the cluster is stopping: it takes no new job")
        job_id = f"job-{self._next_number:05d}"
        self._next_number += 1
        info = JobInfo(job_id, JobState.QUEUED, request.app, request.output, now, events=events_for(job_id))
        self._jobs[job_id] = QueuedJob(info, request)
        return info

    def get(self, job_id: str) -> JobInfo | None:
        job = self._jobs.get(job_id)
        return job.info if job is not None else None

    def job(self, job_id: str) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def all(self) -> list[JobInfo]:
        return [job.info for job in self._jobs.values()]

    @property
    def running(self) -> QueuedJob | None:
        return next((job for job in self._jobs.values() if job.info.state is JobState.RUNNING), None)

    def start_next(self, now: float) -> QueuedJob | None:
        """The job to start now, marked running: the oldest queued, if nothing runs."""
        if self.running is not None or self.stopping:
            return None
        job = next((job for job in self._jobs.values() if job.info.state is JobState.QUEUED), None)
        if job is not None:
            job.runs += 1
            events = rerun_file(job.info.events, job.runs) if job.info.events else ""
            job.info = replace(job.info, state=JobState.RUNNING, started=now, events=events)
        return job

    def ended(self, now: float, job_id: str, ok: bool, message: str) -> JobInfo:
        """The running job's coordinator is gone: succeeded, failed, or cancelled if asked."""
        job = self._jobs[job_id]
        state = JobState.SUCCEEDED if ok else JobState.CANCELLED if job.cancel_asked else JobState.FAILED
        job.info = replace(job.info, state=state, finished=now, message=message)
        self._forget_old()
        return job.info

    def cancel(self, now: float, job_id: str) -> Cancelling:
        job = self._jobs[job_id]
        if job.info.state is JobState.QUEUED:
            message = "cancelled before it ran" if not job.runs else "cancelled"
            job.info = replace(job.info, state=JobState.CANCELLED, finished=now, message=message)
            return Cancelling.DEQUEUED
        if job.info.state is JobState.RUNNING:
            if job.cancel_asked:
                return Cancelling.UNDER_WAY
            job.cancel_asked = True
            return Cancelling.STOP_RUNNING
        return Cancelling.ALREADY_OVER

    def stop(self, now: float, cancel_running: bool) -> list[Cancelling]:
        """Take no new job, cancel the queued ones (and the running one if asked)."""
        self.stopping = True
        self.cancel_running = self.cancel_running or cancel_running
        return [
            self.cancel(now, job.info.job_id)
            for job in list(self._jobs.values())
            if job.info.state is JobState.QUEUED or (cancel_running and job.info.state is JobState.RUNNING)
        ]

    @property
    def idle(self) -> bool:
        return self.running is None and not any(j.info.state is JobState.QUEUED for j in self._jobs.values())

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.info.state.over]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job_id]


_JOB_ID = re.compile(r"job-[0-9]{5,}")


def rerun_file(path: str, run: int) -> str:
    """A file of the job's ``run``-th run: ``path`` for the first, then NAME-2.EXT...: a
    rerun keeps the earlier runs' event logs and coordinator logs."""
    if run <= 1:
        return path
    pure = PurePath(path)
    first = re.sub(r"-[0-9]+$", "", pure.stem)
    return str(pure.with_name(f"{first}-{run}{pure.suffix}"))


# ---- the journal's records: each built from the job as it is after the change ----------


def submitted(job: QueuedJob) -> dict:
    info = job.info
    return record("submitted", job=info.job_id, at=info.submitted, events=info.events, request=to_plain(job.request))


def started(job: QueuedJob) -> dict:
    info = job.info
    return record(
        "started", job=info.job_id, at=info.started, run=job.runs, events=info.events, output_created=job.output_created
    )


def cancel_asked(job: QueuedJob) -> dict:
    return record("cancel", job=job.info.job_id)


def ended(job: QueuedJob) -> dict:
    info = job.info
    return record("ended", job=info.job_id, at=info.finished, state=info.state.value, message=info.message)


def finished(job: QueuedJob) -> dict:
    """A finished job in a compacted journal: its info, its request without the app's
    source (it never runs again; the source is in its folder)."""
    return record("finished", info=to_plain(job.info), request=to_plain(replace(job.request, app_source="")))
