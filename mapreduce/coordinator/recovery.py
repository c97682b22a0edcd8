"""A job's state folder (``--state-dir``): what its coordinator must not forget, so that a
coordinator started again on the folder resumes the job instead of starting over.

The journal (mapreduce.journal) holds, for one job: its id and output token, each epoch
(a run of a coordinator on the folder), each finished task whose output feeds a next stage
(a map, or a reduce of a pipeline's earlier step) with where that output lives, each
committed partition, and the end. Each record is durable before the coordinator acts on it:
a finished map is announced to reducers only once journalled, a partition's commit is
journalled before ``_SUCCESS`` can follow. Every act that another coordinator could
contradict happens under the folder's epoch fence (``fenced``), so a coordinator that a
newer one superseded changes nothing.

The journal names the job by its spec (app, splits, reduce counts, output folder, partition
cut points): a folder of another job, or of the same command over changed inputs, is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mapreduce import journal
from mapreduce.errors import ProtocolError
from mapreduce.inputs import Split
from mapreduce.wire import messages as p

KIND = "job"


@dataclass(frozen=True)
class FinishedOutput:
    """A finished task's output that feeds the next stage, as journalled."""

    stage: int
    task: int
    attempt: int
    worker: p.Register
    server_key: str
    path: str
    lengths: list[int]
    offsets: list[int]
    counters: list = field(default_factory=list)  # [group, counter, value] of the attempt

    def to_record(self) -> dict:
        fields = dataclasses.asdict(self)
        fields["worker"] = p.to_plain(self.worker)
        return journal.record("done", **fields)

    @classmethod
    def from_record(cls, r: dict) -> FinishedOutput:
        try:
            return cls(
                int(r["stage"]),
                int(r["task"]),
                int(r["attempt"]),
                p.from_plain(p.Register, r["worker"]),
                str(r["server_key"]),
                str(r["path"]),
                [int(n) for n in r["lengths"]],
                [int(n) for n in r["offsets"]],
                _counters(r.get("counters", [])),
            )
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            raise journal.JournalError(f"a journal record of a finished task does not read: {exc}") from None


def _counters(value: object) -> list:
    if not isinstance(value, list) or not all(
        isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) and isinstance(c[1], str) and type(c[2]) is int
        for c in value
    ):
        raise ValueError(f"counters {str(value)[:100]}")
    return value


@dataclass
class Recovered:
    """What the journal says of the job when a coordinator starts on it."""

    job_id: str
    output_token: str
    epoch: int  # this coordinator's
    outputs: dict[tuple[int, int], FinishedOutput] = field(default_factory=dict)  # by (stage, task)
    committed: dict[int, list] = field(default_factory=dict)  # partition: its task's counters
    finished: str | None = None  # the message of a job that succeeded

    @property
    def resumed(self) -> bool:
        return self.epoch > 1


def job_identity(app_name: str, splits: list[Split], stages: list[int], output_dir: Path, extra: str) -> str:
    """What a job's journal must belong to: its app and output folder, and a digest of
    everything that places its data (splits, reduce counts, compression, partitioner)."""
    spec = {
        "app": app_name,
        "splits": [[s.path, s.key, s.start, s.end] for s in splits],
        "stages": stages,
        "output": str(output_dir),
        "extra": extra,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"{app_name} -> {output_dir} [{digest}]"


def has_journal(folder: Path) -> bool:
    return (folder / journal.JOURNAL).exists()


class JobState:
    """An open state folder: replayed (``recovered``), taken over (a new epoch), and written
    to as the job goes on."""

    def __init__(self, folder: Path, identity: str):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise journal.JournalError(f"cannot create state folder {folder}: {exc.strerror}") from None
        self.folder = folder
        self._journal = journal.Journal.open(folder, KIND, identity)
        self._epochs = journal.Epochs(folder)
        self.recovered = self._replay(self._journal.records)
        self.recovered.epoch = self._epochs.take_over()
        # Compacted at every start: the job as it stands now, under the new epoch.
        with self.fenced():
            self._journal.rewrite(self._snapshot())

    def _replay(self, records: list[dict]) -> Recovered:
        state = Recovered(uuid.uuid4().hex[:12], secrets.token_hex(16), 0)
        for r in records:
            kind = r.get("r")
            if kind == "job":
                state.job_id, state.output_token = str(r["job_id"]), str(r["output_token"])
            elif kind == "done":
                out = FinishedOutput.from_record(r)
                state.outputs[out.stage, out.task] = out
            elif kind == "lost":  # (not written yet: a lost output is found when it is fetched)
                state.outputs.pop((r["stage"], r["task"]), None)
            elif kind == "committed":
                state.committed[int(r["partition"])] = _counters(r.get("counters", []))
            elif kind == "finished":
                state.finished = str(r["message"])
        return state

    def _snapshot(self) -> list[dict]:
        s = self.recovered
        records = [journal.record("job", job_id=s.job_id, output_token=s.output_token)]
        records.append(journal.record("epoch", epoch=s.epoch))
        records += [out.to_record() for out in s.outputs.values()]
        records += [journal.record("committed", partition=n, counters=c) for n, c in sorted(s.committed.items())]
        if s.finished is not None:
            records.append(journal.record("finished", ok=True, message=s.finished))
        return records

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Hold the folder for one act, done only while this coordinator's epoch is the newest
        (else journal.Superseded)."""
        with self._epochs.fenced():
            yield

    def act(self, do: Callable[[], None], *records: dict) -> None:
        """Do ``do`` and journal ``records`` after it, as one act under the fence."""
        with self.fenced():
            do()
            if records:
                self._journal.append(*records)

    def remember(self, *records: dict) -> None:
        self.act(lambda: None, *records)

    def close(self) -> None:
        self._journal.close()
        self._epochs.close()
