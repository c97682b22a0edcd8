"""The service's job queue: a pure state machine, `now` passed in, no sockets, no processes.

Jobs run one at a time, first in first out. A queued job cancelled never runs; a running one
is stopped by the service (its coordinator process interrupted) and ends CANCELLED when that
process is gone. Stopping the cluster cancels the queue and refuses new jobs; the running job
finishes unless the stop asks to cancel it too.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, replace

from mapreduce.wire.messages import JobInfo, JobState, SubmitJob

KEEP_FINISHED = 1000  # finished jobs remembered for `mapreduce jobs` (their folders stay on disk)


class Cancelling(enum.Enum):
    DEQUEUED = "dequeued"  # it was queued: cancelled at once
    STOP_RUNNING = "stop running"  # the service must interrupt its coordinator
    UNDER_WAY = "under way"  # asked before: its coordinator is cleaning up (a second signal would cut that short)
    ALREADY_OVER = "already over"


@dataclass
class QueuedJob:
    info: JobInfo
    request: SubmitJob
    cancel_asked: bool = False


class JobQueue:
    def __init__(self, first_number: int = 1):
        self._jobs: OrderedDict[str, QueuedJob] = OrderedDict()
        self._next_number = first_number
        self.stopping = False
        self.cancel_running = False

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
            job.info = replace(job.info, state=JobState.RUNNING, started=now)
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
            job.info = replace(job.info, state=JobState.CANCELLED, finished=now, message="cancelled before it ran")
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
