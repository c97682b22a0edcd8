"""mrjob jobs, unmodified: an MRJob class's steps run as streaming steps on the cluster.

Each task runs the job script the way mrjob's own runners make Hadoop run it
(``python JOB.py --step-num=N --mapper`` and so on, with the job's passthrough and file
options), so protocols, hooks, counters and status lines are the job's own business, as on
Hadoop. What is read here, in the submitting process, is what mrjob's runners read: the job's
command line and its step descriptions (``MRJob._steps_desc``; mrjob 0.7.4, its last release).

A step's mapper, combiner and reducer become commands: a ``script`` one runs the job script
(behind its ``pre_filter`` in ``sh -c`` if it has one), a ``command`` one (``mapper_cmd``) runs as
given. A step without a mapper maps with the identity (Hadoop's ``cat``). A map-only step is
fused into the task before it (its mapper reads the lines that task's last command writes), so
every shuffle is one of the job's reducers. ``mapper_raw`` (an input manifest) gets each input
file whole, as a local copy. Jobconf (``-D``, ``JOBCONF``, a step's own) and ``--cmdenv`` reach the
commands as environment variables, under every Hadoop version's name, as mrjob's local runner
does; ``SORT_VALUES`` sorts each key's values. The job script and its files (``FILES``,
``--files``, ``add_file_arg`` options) are shipped to each task's folder under the names mrjob
would give them.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mapreduce.errors import UsageError
from mapreduce.job import App, InputFormat
from mapreduce.streaming import (
    PYTHON,
    Chain,
    Command,
    RawStreamingMap,
    StreamingCombine,
    StreamingMap,
    StreamingRecordMap,
    StreamingReduce,
    parse_command,
)

log = logging.getLogger(__name__)

# Runner options mrjob can take that have no meaning here, each with what to do instead.
_UNSUPPORTED_OPTIONS = {
    "setup": "ship what the tasks need with the job's FILES or --files",
    "upload_archives": "ship the files themselves with FILES or --files",
    "upload_dirs": "ship the files themselves with FILES or --files",
    "py_files": "ship modules with FILES or --files: a task's folder is on its Python path",
    "libjars": "Java libraries need Hadoop",
}
_REDUCES = ("mapreduce.job.reduces", "mapred.reduce.tasks")  # the number of reduce tasks, as jobconf


@dataclass(frozen=True)
class MRJobRun:
    """What running an mrjob job here takes: the app its steps make, its inputs and output,
    and the files each task's folder needs (``PATH#NAME``)."""

    app: App
    inputs: tuple[str, ...]
    output: str | None  # the job's own --output-dir, if it gave one
    files: tuple[str, ...]
    n_reduce: int | None  # the first step's reduce count, from its jobconf


def load(script: str, job_args: Sequence[str], n_reduce: int | None = None) -> MRJobRun:
    """The job in ``script`` with ``job_args`` (what one gives ``python JOB.py``), as an app of
    streaming steps; UsageError for anything that cannot run here, before any work.
    ``n_reduce``: reduce tasks per step where the job's jobconf sets none."""
    if n_reduce is not None and n_reduce < 1:
        raise UsageError(
            f"--reduce must be at least 1 for an mrjob job (a step without a reducer is map-only), got {n_reduce}"
        )
    try:
        from mrjob.job import MRJob
    except ImportError as exc:  # not installed, or broken (0.7.4 imports `pipes`, gone in Python 3.13)
        raise UsageError(
            f"mapreduce mrjob needs the mrjob package (mrjob 0.7.4) and cannot import it ({exc}): install "
            "mapreduce with its mrjob extra, pip install 'mapreduce-zmq[mrjob]', on Python 3.12 or older"
        ) from None
    job_class = _job_class(script, MRJob)
    try:
        job = job_class(args=list(job_args))
    except ValueError as exc:  # what mrjob's option parser raises on bad options
        raise UsageError(f"{script}: {exc}") from None
    kwargs = job._runner_kwargs()
    if job.options.runner not in (None, "inline", "local"):
        log.warning("%s: -r %s is ignored: the job runs on mapreduce's workers", script, job.options.runner)
    for what in ("hadoop_input_format", "hadoop_output_format"):
        if kwargs.get(what):
            raise UsageError(
                f"{script}: {what.upper()} = {kwargs[what]!r} is a Java class, which needs Hadoop: "
                "read the input (or write the output) as lines, or with a mapper_raw"
            )
    for option, instead in _UNSUPPORTED_OPTIONS.items():
        if kwargs.get(option):
            raise UsageError(f"{script}: mrjob's {option} option cannot be used here: {instead}")
    if kwargs.get("partitioner") and not kwargs.get("sort_values"):
        log.warning(
            "%s: PARTITIONER %r is a Java class: keys are partitioned by hash here", script, kwargs["partitioner"]
        )
    inputs = tuple(kwargs.get("input_paths") or ())
    if not inputs or "-" in inputs:
        raise UsageError(f"{script}: give input files or folders (mapreduce mrjob does not read standard input)")
    steps = kwargs["steps"]
    files = _WorkingDir(script, kwargs)
    translate = _Steps(script, files, kwargs, n_reduce)
    app, first_reduces = translate.app(steps)
    return MRJobRun(
        app, tuple(os.path.abspath(i) for i in inputs), kwargs.get("output_dir"), files.shipped(), first_reduces
    )


def _job_class(script: str, base: type) -> type:
    """The MRJob class a job script defines (the one no other of its classes derives from)."""
    path = Path(script)
    if not path.is_file():
        raise UsageError(f"the job script {script!r} {'is not a file' if path.exists() else 'does not exist'}")
    name = f"mapreduce_mrjob_{path.stem}"
    spec = importlib.util.spec_from_loader(name, importlib.machinery.SourceFileLoader(name, str(path)))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where mrjob looks for the script's path
    sys.path.insert(0, str(path.resolve().parent))  # as `python JOB.py` would: its own folder first
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise UsageError(f"{script} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, base) and value.__module__ == module.__name__
    ]
    leaves = [c for c in classes if not any(other is not c and issubclass(other, c) for other in classes)]
    if len(leaves) != 1:
        found = f"several ({', '.join(c.__name__ for c in leaves)})" if leaves else "none"
        raise UsageError(f"{script} must define one MRJob class (a subclass of mrjob.job.MRJob); it defines {found}")
    return leaves[0]


class _WorkingDir:
    """The files of each task's folder, named as mrjob's own runners name them."""

    def __init__(self, script: str, kwargs: Mapping[str, Any]):
        from mrjob.setup import WorkingDirManager, parse_legacy_hash_path

        self._names = WorkingDirManager()
        self.script = os.path.abspath(script)
        self._names.add("file", self.script)
        for path in kwargs.get("upload_files") or ():
            self._names.add(**parse_legacy_hash_path("file", path, must_name="upload_files"))
        for arg in kwargs.get("extra_args") or ():
            if isinstance(arg, dict):
                self._names.add(**arg)

    def name(self, path: str, name: str | None = None, type: str = "file") -> str:
        return self._names.name(type, path, name)

    def shipped(self) -> tuple[str, ...]:
        return tuple(f"{path}#{name}" for name, path in sorted(self._names.name_to_path("file").items()))


class _Steps:
    """An mrjob job's step descriptions as an app of streaming steps."""

    def __init__(self, script: str, files: _WorkingDir, kwargs: Mapping[str, Any], n_reduce: int | None):
        self.script, self.files, self.kwargs, self.n_reduce = script, files, kwargs, n_reduce
        python = kwargs.get("task_python_bin") or kwargs.get("python_bin")
        self.python = tuple(python) if python else (PYTHON,)
        self.job_args = [files.name(**a) if isinstance(a, dict) else a for a in kwargs.get("extra_args") or ()]

    def app(self, steps: Sequence[Mapping[str, Any]]) -> tuple[App, int | None]:
        """The app, and its first reducer's reduce count (0: a map-only job)."""
        stages: list[dict[str, Any]] = []  # one a reducer: map commands, combiner, reduce commands
        lead: list[Command] = []  # the mappers of map-only steps before any reducer
        raw: Command | None = None
        for number, step in enumerate(steps):
            if step.get("type") != "streaming":
                raise UsageError(
                    f"{self.script}: step {number + 1} is a {step.get('type')} step; mapreduce mrjob runs "
                    "streaming steps (mapper, combiner, reducer, in Python or as commands): "
                    "Spark and JAR steps need Spark or Hadoop"
                )
            mapper = self.command(number, step, "mapper") if "mapper" in step else None
            if step.get("input_manifest"):
                raw, mapper = mapper, None  # number is 0: mrjob allows mapper_raw in the first step only
            if "reducer" not in step:
                if stages:
                    stages[-1]["reduce"].append(mapper)
                elif mapper is not None:
                    lead.append(mapper)
                continue
            combiner = self.command(number, step, "combiner") if "combiner" in step else None
            stages.append(
                {
                    "step": number,
                    "map": [*lead, *([mapper] if mapper else [])],
                    "combine": combiner,
                    "reduce": [self.command(number, step, "reducer")],
                }  # fmt: skip
            )
            lead = []
        first = self._first_map(raw, stages[0]["map"] if stages else lead)
        name = f"mrjob {os.path.basename(self.script)}"
        kind = {"whole_files": True, "input_format": InputFormat.BYTES} if raw else {}
        if not stages:
            return App(name, map=first, reduce=None, **kind), 0
        sort_values = bool(self.kwargs.get("sort_values"))
        apps = [
            App(
                f"{name} (step {stage['step'] + 1})",
                map=StreamingRecordMap(Chain(tuple(stage["map"]))) if index else first,
                reduce=StreamingReduce(Chain(tuple(stage["reduce"]))),
                combine=StreamingCombine(stage["combine"]) if stage["combine"] else None,
                sort_values=sort_values,
                n_reduce=self.reduces(stage["step"], steps[stage["step"]]) if index else None,
                **(kind if index == 0 else {}),
            )
            for index, stage in enumerate(stages)
        ]
        top = replace(apps[0], name=name, steps=tuple(apps) if len(apps) > 1 else ())
        return top, self.reduces(stages[0]["step"], steps[stages[0]["step"]])

    def _first_map(self, raw: Command | None, mappers: list[Command]) -> Any:
        if raw is not None:
            return RawStreamingMap(raw, Chain(tuple(mappers)))
        return StreamingMap(Chain(tuple(mappers)), input_uri=True)

    def command(self, number: int, step: Mapping[str, Any], role: str) -> Command:
        substep = step[role]
        env = self._environment(number, step)
        if substep["type"] == "command":
            given = substep["command"]
            argv = parse_command(given, f"the {role}") if isinstance(given, str) else tuple(given)
        elif substep["type"] == "script":
            argv = (*self.python, self.files.name(self.files.script), f"--step-num={number}", f"--{role}")
            argv += tuple(self.job_args)
            if substep.get("pre_filter"):
                argv = ("sh", "-c", f"{substep['pre_filter']} | {shlex.join(argv)}")
        else:
            raise UsageError(f"{self.script}: step {number + 1}'s {role} is of a kind unknown here: {substep!r}")
        return Command(argv, role, env)

    def _environment(self, number: int, step: Mapping[str, Any]) -> dict[str, str]:
        from mrjob.compat import translate_jobconf_for_all_versions

        env = {}
        for name, value in self.jobconf(number, step).items():
            if value is None:
                continue  # mrjob's way of unsetting a jobconf
            for variant in translate_jobconf_for_all_versions(name):
                env[variant.replace(".", "_")] = str(value).lower() if isinstance(value, bool) else str(value)
        return env | {str(k): str(v) for k, v in (self.kwargs.get("cmdenv") or {}).items()}

    def jobconf(self, number: int, step: Mapping[str, Any]) -> dict[str, Any]:
        conf: dict[str, Any] = {}
        if self.kwargs.get("sort_values"):
            conf |= {
                "mapreduce.partition.keypartitioner.options": "-k1,1",
                "stream.num.map.output.key.fields": "2",
            }
        return conf | dict(self.kwargs.get("jobconf") or {}) | dict(step.get("jobconf") or {})

    def reduces(self, number: int, step: Mapping[str, Any]) -> int | None:
        """A step's reduce count: its jobconf's, else the one given for every step."""
        conf = self.jobconf(number, step)
        given = next((conf[name] for name in _REDUCES if conf.get(name) is not None), None)
        if given is None:
            return self.n_reduce
        try:
            value = int(given)
        except (TypeError, ValueError):
            value = -1
        if value < 1:
            raise UsageError(
                f"{self.script}: step {number + 1}: jobconf reduces = {given!r}: expected a whole number >= 1"
            )
        return value
