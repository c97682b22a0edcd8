"""The ``mapreduce`` command."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mapreduce import defaults
from mapreduce.errors import JobFailed, MapReduceError, UsageError
from mapreduce.service.commands import KEY_NAME_OPTION

if TYPE_CHECKING:
    from mapreduce.coordinator.view import JobView
    from mapreduce.job import App

_SIZE = re.compile(r"^(\d+)([kmg]?)b?$", re.IGNORECASE)


class Size(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value).strip())
        if not match:
            self.fail(f"{value!r} is not a size like 4096, 512k, 64M or 1G", param, ctx)
        return int(match.group(1)) * 1024 ** " kmg".index((match.group(2) or " ").lower())


def _params(values: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        params[name] = value
    return params


COMPRESSIONS = ["none", "gzip"]  # output.Compression's values (not imported here: see _compression)


def _compression(ctx, param, value: str):
    from mapreduce.output import Compression

    return Compression(value)


def _job_options(f):
    options = [
        click.argument("app"),
        click.argument("inputs", nargs=-1, required=True),
        click.option(
            "--output",
            "-o",
            required=True,
            type=click.Path(file_okay=False),
            help="Folder for part-* files and _SUCCESS.",
        ),
        click.option(
            "--reduce",
            "-r",
            "n_reduce",
            type=int,
            default=None,
            help=f"Number of reduce tasks (output partitions) [default: {defaults.N_REDUCE}, or 0 for an app "
            "without reduce]; 0: a map-only job, a part file per map task.",
        ),
        click.option(
            "--param",
            "-p",
            "params",
            multiple=True,
            metavar="NAME=VALUE",
            help="A parameter for the app's init(params); repeatable.",
        ),
        click.option(
            "--split-size",
            type=Size(),
            default=f"{defaults.SPLIT_SIZE >> 20}M",
            show_default=True,
            help="Largest input split given to one map task.",
        ),
        click.option(
            "--overwrite", is_flag=True, help="Replace the part-* files of an earlier job in the output folder."
        ),
        click.option(
            "--compress",
            type=click.Choice(COMPRESSIONS),
            default="none",
            show_default=True,
            callback=_compression,
            help="Write the part files compressed: gzip names them part-NNNNN.gz.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_skip_bad_records_option = click.option(
    "--skip-bad-records",
    type=int,
    default=0,
    show_default=True,
    metavar="N",
    help="Skip a record on which map or reduce raised in two attempts, up to N per task (each one reported).",
)


_files_option = click.option(
    "--file",
    "files",
    multiple=True,
    metavar="PATH",
    help="A side file for every task: shipped to each worker once, opened by its name (repeatable).",
)


def _streaming_options(mapper_required: bool):
    """A Hadoop Streaming job's commands and settings: --mapper, --reducer, --combiner, -D."""
    mapper_help = "The mapper's command line: input lines in, records out."
    options = [
        click.option(
            "--mapper",
            required=mapper_required,
            metavar="CMD",
            help=mapper_help if mapper_required else mapper_help + " Makes the job a streaming job (no APP).",
        ),
        click.option(
            "--reducer", metavar="CMD", default=None, help="The reducer's command line (NONE, or none given: map-only)."
        ),
        click.option("--combiner", metavar="CMD", default=None, help="A command run on each map's sorted output."),
        click.option(
            "-D", "defines", multiple=True, metavar="NAME=VALUE", help="A setting, in the commands' environment."
        ),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _streaming_app(
    mapper: str,
    reducer: str | None,
    combiner: str | None,
    defines: tuple[str, ...],
    files: tuple[str, ...],
    n_reduce: int | None,
) -> App:
    """The streaming job's app; UsageError for a bad command line or setting, a command not
    found, or reduces asked of a map-only job."""
    from mapreduce import streaming as stream
    from mapreduce.inputs import check_side_files

    shipped = [name for name, _, _ in check_side_files(files)]  # PATH#NAME: a command may be NAME
    made = stream.streaming_app(mapper, reducer, defines, shipped, combiner)
    if made.reduce is None and n_reduce:
        raise UsageError(f"a streaming job without a reducer is map-only: --reduce must be 0, got {n_reduce}")
    return made


JOB_STATE_HELP = (
    "Journal the job in this folder (made if absent): started again with the same command after "
    "a crash, the coordinator resumes it, keeping committed partitions and finished map output."
)


def _cluster_options(f):
    options = [
        click.option(
            "--heartbeat-interval",
            default=defaults.HEARTBEAT_INTERVAL,
            show_default=True,
            help="Seconds between heartbeats, both ways.",
        ),
        click.option(
            "--worker-timeout",
            default=defaults.WORKER_TIMEOUT,
            show_default=True,
            help="Seconds of silence before a worker is declared dead.",
        ),
        click.option(
            "--max-attempts",
            default=defaults.MAX_ATTEMPTS,
            show_default=True,
            help="Attempts per task whose user code raised before the job fails.",
        ),
        click.option(
            "--task-timeout",
            type=float,
            default=None,
            help="Fail an attempt running longer than this many seconds (default: no limit).",
        ),
        click.option(
            "--speculation/--no-speculation",
            default=defaults.SPECULATION,
            show_default=True,
            help="Give stragglers a backup attempt on an idle worker.",
        ),
        click.option(
            "--max-worker-losses",
            default=defaults.MAX_WORKER_LOSSES,
            show_default=True,
            help="Fail the job when one task has lost this many workers in a row.",
        ),
        _skip_bad_records_option,
        _files_option,
        click.option(
            "--min-workers",
            default=defaults.MIN_WORKERS,
            show_default=True,
            help="Hand out no task until this many workers have joined.",
        ),
        click.option(
            "--events",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Write the job's event log here (JSON lines).",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress display."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _status_options(f):
    f = click.option(
        "--status-bind", default="127.0.0.1", show_default=True, help="Address the status page listens on."
    )(f)
    return click.option(
        "--status-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve a live status page and /status.json on this port (0: any free port); see `mapreduce status`.",
    )(f)


def _status_server(bind: str, port: int | None):
    if port is None:
        return None
    from mapreduce.net.security import is_loopback
    from mapreduce.tools.status import StatusServer

    try:
        server = StatusServer(bind, port)
    except OSError as exc:
        click.echo(f"error: cannot serve the status page on {bind}:{port}: {exc}", err=True)
        sys.exit(2)
    if not is_loopback(bind):
        click.echo(
            f"warning: the status page on {bind} has no authentication: it shows hosts, files and errors to "
            "whoever reaches it",
            err=True,
        )
    click.echo(f"status page: {server.url}  (or: mapreduce status {server.url})", err=True)
    return server


def _with_status(bind: str, port: int | None, job):
    """Run job(observe) with a status page if a port was given, closed afterwards; ``observe``
    (the coordinator's observer) publishes the job to that page, or is None without one."""
    server = _status_server(bind, port)
    try:
        if server is None:
            return job(None)
        from mapreduce.tools.status import StatusBoard

        return job(StatusBoard(server))
    finally:
        if server is not None:
            server.close(linger=3.0)  # a watching page or `status --watch` gets the final state


class _Group(click.Group):
    """Commands for running jobs, plus tools imported only when used (workers start faster)."""

    lazy = {
        "cancel": "mapreduce.service.commands:cancel",
        "cluster": "mapreduce.service.commands:cluster",
        "gensort": "mapreduce.tools.gensort:gensort_command",
        "jobs": "mapreduce.service.commands:jobs",
        "launch-workers": "mapreduce.tools.launch:launch",
        "report": "mapreduce.tools.report:report",
        "status": "mapreduce.tools.status:status",
        "submit": "mapreduce.service.commands:submit",
        "valsort": "mapreduce.tools.gensort:valsort_command",
        "vnet": "mapreduce.tools.vnet:vnet",
    }

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attribute = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """A MapReduce framework: run jobs on a local cluster or on workers anywhere."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command()
@_job_options
@click.option(
    "--workers", "-w", default=os.cpu_count() or 1, show_default=True, help="Number of local worker processes."
)
@_cluster_options
@_status_options
@click.option("--keep-logs", is_flag=True, help="Keep the workers' log files and print where they are.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=JOB_STATE_HELP,
)
def run(
    app,
    inputs,
    output,
    n_reduce,
    params,
    split_size,
    overwrite,
    workers,
    events,
    quiet,
    keep_logs,
    state_dir,
    status_bind,
    status_port,
    **cluster,
):
    """Run APP over INPUTS on a local cluster of worker processes."""
    from mapreduce import runner  # here, not at the top: a worker process needs none of it

    options = runner.JobOptions(n_reduce, split_size, overwrite, _params(params), **cluster)
    started = time.monotonic()
    result = _with_status(
        status_bind,
        status_port,
        lambda observe: _with_progress(
            quiet,
            lambda progress: runner.run_local(
                app, inputs, output, workers, options, progress, keep_logs, events, observe, state_dir
            ),
        ),
    )
    if not quiet:
        click.echo(
            f"{app}: {result.n_map} maps, {result.n_reduce} reduces on {workers} workers in "
            f"{time.monotonic() - started:.2f} s; output in {output}",
            err=True,
        )
        _echo_counters(result.tally.counters)


@cli.command()
@_job_options
@_skip_bad_records_option
@_files_option
@click.option("--quiet", "-q", is_flag=True, help="No counters at the end.")
def seq(app, inputs, output, n_reduce, params, split_size, overwrite, compress, skip_bad_records, files, quiet):
    """Run APP over INPUTS in this one process: the reference output."""
    from mapreduce import runner

    options = runner.JobOptions(
        n_reduce,
        split_size,
        overwrite,
        _params(params),
        skip_bad_records=skip_bad_records,
        compress=compress,
        files=tuple(files),
    )
    counts = _guard(lambda: runner.run_seq(app, inputs, output, options))
    if not quiet:
        _echo_counters(counts)


def _echo_counters(counts) -> None:
    """The job's counters, a line each, on stderr (as Hadoop prints them at a job's end)."""
    from mapreduce.counters import format_counters

    lines = format_counters(counts)
    if lines:
        click.echo("counters:\n  " + "\n  ".join(lines), err=True)


def _security_options(f):
    options = [
        click.option(
            "--key-dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="MAPREDUCE_KEY_DIR",
            default=None,
            help=(
                "Folder of CURVE keys from `mapreduce keygen` (or $MAPREDUCE_KEY_DIR): encrypt and "
                "authenticate every connection."
            ),
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="Allow a non-loopback address without keys: anyone who reaches it can run code here.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _keys(key_dir: Path | None, role: str, name: str | None = None):
    from mapreduce.net.security import load

    if key_dir is None:
        if name is not None:
            _guard(lambda: _usage("--key-name needs --key-dir"))
        return None
    return _guard(lambda: load(key_dir, role, name))


def _usage(message: str):
    raise UsageError(message)


@cli.command()
@_job_options
@click.option("--bind", default="tcp://127.0.0.1:5555", show_default=True, help="ZeroMQ endpoint workers connect to.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=JOB_STATE_HELP)
@_security_options
@_cluster_options
@_status_options
def coordinator(
    app,
    inputs,
    output,
    n_reduce,
    params,
    split_size,
    overwrite,
    bind,
    state_dir,
    key_dir,
    insecure,
    events,
    quiet,
    status_bind,
    status_port,
    **cluster,
):
    """Serve one job to workers that connect with `mapreduce worker`. A non-loopback --bind needs
    --key-dir (or --insecure)."""
    from mapreduce import runner

    options = runner.JobOptions(n_reduce, split_size, overwrite, _params(params), **cluster)
    keys = _keys(key_dir, "coordinator")
    announce = (
        (lambda address: click.echo(f"coordinator for {app} listening on {address}", err=True)) if not quiet else None
    )
    result = _with_status(
        status_bind,
        status_port,
        lambda observe: _with_progress(
            quiet,
            lambda progress: runner.serve(
                app, inputs, output, bind, options, progress, announce, events, keys, insecure, observe, state_dir
            ),
        ),
    )
    if not quiet:
        click.echo(
            f"{app}: {result.n_map} maps, {result.n_reduce} reduces in {result.seconds:.2f} s; output in {output}",
            err=True,
        )
        c = result.tally
        if c.input_fetched or c.shuffle_fetched or c.output_pulled:
            click.echo(
                f"network: {_mb(c.input_fetched)} of input and {_mb(c.output_pulled)} of output through the "
                "coordinator, "
                f"{_mb(c.shuffle_fetched)} of map output worker to worker",
                err=True,
            )
        _echo_counters(c.counters)


def _placement_options(f):
    """What `streaming` and `mrjob` share: splits, the output folder's reuse, and where the job
    runs (local workers, workers anywhere with their security, or one process), with the
    cluster's and the status page's options."""
    options = [
        click.option("--split-size", type=Size(), default=f"{defaults.SPLIT_SIZE >> 20}M", show_default=True),
        click.option(
            "--overwrite", is_flag=True, help="Replace the part-* files of an earlier job in the output folder."
        ),
        click.option(
            "--workers", "-w", default=os.cpu_count() or 1, show_default=True, help="Number of local worker processes."
        ),
        click.option(
            "--bind",
            default=None,
            metavar="ENDPOINT",
            help="Serve the job to `mapreduce worker`s here, not local workers.",
        ),
        click.option(
            "--sequential", is_flag=True, help="Run in this one process, as `mapreduce seq` does (the oracle)."
        ),
        click.option(
            "--cluster",
            default=None,
            metavar="ENDPOINT",
            help="Submit the job to the standing cluster at ENDPOINT (with this client's keys in --key-dir).",
        ),
        click.option(
            "--submit", is_flag=True, help="Submit the job to the standing cluster on this host (see --state-dir)."
        ),
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="MAPREDUCE_STATE_DIR",
            help=(
                "With --submit: the standing cluster on this host, by its state folder [default: "
                "~/.local/state/mapreduce/cluster]. With --bind, given here (not by $MAPREDUCE_STATE_DIR): "
                + JOB_STATE_HELP[0].lower()
                + JOB_STATE_HELP[1:]
            ),
        ),
        KEY_NAME_OPTION,
        click.option("--detach", is_flag=True, help="Submitted: print the job's id and return."),
        _security_options,
        _cluster_options,
        _status_options,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.option(
    "--input", "inputs", multiple=True, required=True, metavar="PATH", help="An input file or folder (repeatable)."
)
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for part-* files.")
@_streaming_options(mapper_required=True)
@click.option(
    "--reduce", "-r", "n_reduce", type=int, default=None, help=f"Number of reduce tasks [default: {defaults.N_REDUCE}]."
)
@_placement_options
def streaming(inputs, output, mapper, reducer, combiner, defines, n_reduce, files, split_size, overwrite, **rest):
    """Run a Hadoop Streaming job: executables as mapper and reducer.

    The mapper reads its split's lines on stdin and writes records, key before the first tab;
    the reducer reads key<TAB>value lines sorted by key, a key's lines together, and its lines
    are the output. On local workers, on workers anywhere (--bind), or in one process."""
    from mapreduce import runner

    job = _guard(lambda: _streaming_app(mapper, reducer, combiner, defines, files, n_reduce))
    where = _Placement.take(rest)
    if where.submits:
        from mapreduce.service.client import streaming_submission

        where.send(
            lambda: streaming_submission(
                inputs, output, mapper, reducer, combiner, defines, files, n_reduce=n_reduce, split_size=split_size,
                overwrite=overwrite, max_attempts=rest["max_attempts"],
            )
        )  # fmt: skip
    where.run(job, inputs, output, runner.JobOptions(n_reduce, split_size, overwrite, {}, files=tuple(files), **rest))


@dataclass(frozen=True)
class _Placement:
    """Where an app built here (a streaming or mrjob job) runs, from _placement_options: in this
    one process, served to workers that connect to ``bind``, or on local workers."""

    workers: int
    bind: str | None
    sequential: bool
    cluster: str | None  # submitted to a standing cluster (or, with submit, the one on this host)
    submit: bool
    state_dir: Path | None
    key_name: str | None
    detach: bool
    key_dir: Path | None
    insecure: bool
    events: Path | None
    quiet: bool
    status_bind: str
    status_port: int | None

    @classmethod
    def take(cls, params: dict) -> _Placement:
        """Its fields, taken out of a command's parameters (the rest are the job's options)."""
        return cls(**{f.name: params.pop(f.name) for f in dataclasses.fields(cls)})

    @property
    def submits(self) -> bool:
        return self.submit or self.cluster is not None

    def send(self, request) -> None:
        """Submit ``request()`` (a SubmitJob) to the standing cluster and follow it; exit with
        its status. The cluster's own settings (heartbeats, timeouts) apply to it."""
        from mapreduce.service.commands import send

        if self.bind or self.sequential:
            _guard(
                lambda: _usage("--cluster and --submit send the job to a standing cluster: no --bind or --sequential")
            )
        sys.exit(send(request, self.detach, self.cluster, self.key_dir, self.key_name, self.state_dir, 10.0))

    def run(self, job, inputs, output, options) -> None:
        """Run the job; its counters on stderr unless quiet."""
        from mapreduce import runner

        if self.sequential:
            counts = _guard(lambda: runner.run_seq(job, inputs, output, options))
        else:
            counts = _with_status(
                self.status_bind, self.status_port, lambda observe: self._run(job, inputs, output, options, observe)
            ).tally.counters
        if not self.quiet:
            _echo_counters(counts)

    def _run(self, job, inputs, output, options, observe):
        from mapreduce import runner

        if not self.bind:
            return _with_progress(
                self.quiet,
                lambda progress: runner.run_local(
                    job, inputs, output, self.workers, options, progress, False, self.events, observe
                ),
            )
        keys = _keys(self.key_dir, "coordinator")
        announce = None if self.quiet else (lambda address: click.echo(f"{job.name} served on {address}", err=True))
        source = click.get_current_context().get_parameter_source("state_dir")
        state_dir = self.state_dir if source is click.core.ParameterSource.COMMANDLINE else None
        return _with_progress(
            self.quiet,
            lambda progress: runner.serve(
                job,
                inputs,
                output,
                self.bind,
                options,
                progress,
                announce,
                self.events,
                keys,
                self.insecure,
                observe,
                state_dir,
            ),
        )


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for part-* files (default: the job's --output-dir; none: the output to stdout, as mrjob does).",
)
@click.option(
    "--reduce",
    "-r",
    "n_reduce",
    type=int,
    default=None,
    help=f"Reduce tasks of each step whose jobconf sets none [default: {defaults.N_REDUCE}].",
)
@_placement_options
@click.argument("script", metavar="JOB.py")
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED, metavar="[JOB_ARGS]...")
def mrjob(script, job_args, output, n_reduce, split_size, overwrite, files, **rest):
    """Run an mrjob job, unmodified: JOB.py's MRJob class with JOB_ARGS, what one would give
    `python JOB.py` (its options and input paths). Each task runs the script as mrjob's runners
    run it (JOB.py --step-num=N --mapper ...). Our options come before JOB.py."""
    import shutil
    import tempfile

    from mapreduce import mrjobs, runner

    run = _guard(lambda: mrjobs.load(script, job_args, n_reduce))
    output = output or run.output
    where = _Placement.take(rest)
    if where.submits:
        from mapreduce.service.client import mrjob_submission

        if not output:
            _guard(
                lambda: _usage("a job submitted to a standing cluster needs --output (a folder on the cluster's host)")
            )
        where.send(
            lambda: mrjob_submission(
                script, job_args, run.inputs, output, files, n_reduce=n_reduce, split_size=split_size,
                overwrite=overwrite, max_attempts=rest["max_attempts"],
            )
        )  # fmt: skip
    options = runner.JobOptions(run.n_reduce, split_size, overwrite, {}, files=(*run.files, *files), **rest)
    if output:
        where.run(run.app, run.inputs, output, options)
        return
    with tempfile.TemporaryDirectory(prefix="mapreduce-mrjob-") as folder:  # mrjob's way: the output to stdout
        where.run(run.app, run.inputs, os.path.join(folder, "out"), options)
        for part in sorted(Path(folder, "out").glob("part-*")):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.flush()


@cli.command()
@click.option("--connect", "-c", required=True, help="The coordinator's endpoint, e.g. tcp://host:5555.")
@click.option(
    "--scratch",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for map output (default: a per-user folder in the temp dir).",
)
@click.option("--name", default="", help="A name for logs (default host:pid).")
@click.option(
    "--advertise",
    default="",
    help="Address of this host that the coordinator and other workers can reach; "
    "the data server binds it. Default: this host's address on the interface that reaches the coordinator.",
)
@click.option(
    "--heartbeat-interval", default=defaults.HEARTBEAT_INTERVAL, show_default=True, help="Seconds between heartbeats."
)
@click.option(
    "--coordinator-timeout",
    default=defaults.COORDINATOR_TIMEOUT,
    show_default=True,
    help="Exit non-zero after this many seconds without word from the coordinator.",
)
@click.option(
    "--drain-timeout",
    default=defaults.DRAIN_TIMEOUT,
    show_default=True,
    help="On SIGTERM, seconds the current task may take to finish before it is handed back.",
)
@click.option(
    "--stay",
    is_flag=True,
    help="Serve job after job: when a job ends (or its coordinator is lost) start afresh, a new process "
    "with nothing of the last job's code, and wait as long as it takes for the next coordinator at CONNECT. "
    "SIGTERM still drains and exits.",
)
@_security_options
@click.option(
    "--key-name",
    envvar="MAPREDUCE_KEY_NAME",
    default=None,
    help=(
        "With per-host keys: this worker's key pair, workers/NAME.key_secret in --key-dir "
        "(or $MAPREDUCE_KEY_NAME). Default: the one worker secret key the folder holds."
    ),
)
def worker(
    connect,
    scratch,
    name,
    advertise,
    heartbeat_interval,
    coordinator_timeout,
    drain_timeout,
    stay,
    key_dir,
    insecure,
    key_name,
):
    """Run tasks for the coordinator at CONNECT until its job is done (with --stay: job after
    job). SIGTERM drains: no new task, the current one finishes or is handed back, then exit 0."""
    from mapreduce.net.node import address_towards, default_scratch, endpoint_host
    from mapreduce.net.security import check_exposure
    from mapreduce.worker.core import ExitCode
    from mapreduce.worker.loop import Worker, WorkerOptions
    from mapreduce.worker.zygote import RETRY_LATER, SERVE_AGAIN, job_after_job

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    keys = _keys(key_dir, "worker", key_name)
    _guard(lambda: check_exposure("the coordinator's address", endpoint_host(connect), keys, insecure))
    _guard(
        lambda: check_exposure(
            "this worker's data server address", advertise or address_towards(connect), keys, insecure
        )
    )
    options = WorkerOptions(
        connect,
        scratch or default_scratch(),
        name,
        advertise,
        heartbeat_interval,
        coordinator_timeout=coordinator_timeout,
        drain_timeout=drain_timeout,
        keys=keys,
        stay=stay,
    )

    def serve() -> int:
        try:
            node = Worker(options)
        except Exception as exc:  # zmq.ZMQError: the advertised address is not this host's
            where = advertise or "the default address"
            click.echo(f"error: cannot start the worker's data server on {where}: {exc}", err=True)
            return 2
        code = node.run()
        if node.serves_again:
            return RETRY_LATER if node.retries else SERVE_AGAIN
        if code == ExitCode.REFUSED:
            click.echo(f"error: {node.refused}", err=True)
        elif code == ExitCode.COORDINATOR_LOST:
            click.echo(
                f"error: coordinator at {connect} unreachable for {coordinator_timeout:.0f} s; worker exiting",
                err=True,
            )
        return code

    sys.exit(job_after_job(serve, crash_pause=heartbeat_interval) if stay else serve())


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=Size(), default="20M", show_default=True, help="Total size of the text.")
@click.option("--files", default=8, show_default=True, help="Number of files.")
@click.option("--seed", default=0, show_default=True, help="The same seed gives the same text.")
def corpus(folder, size, files, seed):
    """Write a generated text corpus into FOLDER (for demos and benchmarks)."""
    from mapreduce.tools.corpus import write_corpus

    paths = write_corpus(folder, size, files, seed)
    click.echo(f"wrote {len(paths)} files, {sum(p.stat().st_size for p in paths)} bytes, into {folder}")


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--worker", "workers", multiple=True, metavar="NAME", help="A key pair for this worker host (repeat).")
@click.option("--client", "clients", multiple=True, metavar="NAME", help="A key pair for this client (repeat).")
def keygen(folder, workers, clients):
    """Write CURVE key pairs for a coordinator and its workers into FOLDER (never over old ones).

    Without --worker: one pair shared by all workers (coordinator.key, worker.key and their
    _secret files; give every host the whole folder). With --worker NAME: a pair per worker
    host, workers/NAME.key(_secret), so one host is revoked by deleting its workers/NAME.key;
    run again with new names to add hosts. A worker host gets coordinator.key, workers/*.key
    and its own workers/NAME.key_secret only. --client NAME: clients/NAME.key(_secret), for
    job-submission clients (not admitted yet). See the README's Security section."""
    from mapreduce.net.security import generate

    written = _guard(lambda: generate(folder, workers, clients))
    click.echo(f"wrote {', '.join(str(p.relative_to(folder)) for p in written)} into {folder}")


@cli.command("apps")
def list_apps() -> None:
    """List the built-in apps."""
    from mapreduce.job import builtin_apps

    for name in builtin_apps():
        click.echo(name)


@cli.command()
@click.argument("app", required=False)
@click.argument("inputs", nargs=-1)
@_streaming_options(mapper_required=False)
@click.option(
    "--mrjob",
    "mrjob_job",
    metavar="'JOB.py [JOB_ARGS]'",
    default=None,
    help="Crash-test an mrjob job: its script with its options and inputs, as one shell-quoted word.",
)
@click.option(
    "--input",
    "stream_inputs",
    multiple=True,
    metavar="PATH",
    help="An input file or folder of the streaming job (repeatable; default: a generated corpus).",
)
@_files_option
@click.option(
    "--workers", "-w", default=4, show_default=True, help="Local worker processes; killed and paused ones are replaced."
)
@click.option(
    "--rounds",
    type=int,
    default=None,
    help="Runs of the job under injected faults [default: 3; with --kill-coordinator, one per kill point].",
)
@click.option(
    "--kill-every", default=1.0, show_default=True, help="Mean seconds between faults (each gap is 0.5x to 1.5x this)."
)
@click.option(
    "--pause-probability",
    default=0.2,
    show_default=True,
    help="Chance that a fault is a SIGSTOP longer than the worker timeout, not a SIGKILL.",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seeds the faults' timing and victims, and the generated corpus."
)
@click.option("--reduce", "-r", "n_reduce", type=int, default=None, help="Number of reduce tasks (default: as run).")
@click.option(
    "--split-size", type=Size(), default="1M", show_default=True, help="Largest input split given to one map task."
)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A parameter for the app's init(params); repeatable.",
)
@click.option(
    "--worker-timeout", default=2.0, show_default=True, help="Seconds of silence before a worker is declared dead."
)
@click.option("--heartbeat-interval", default=0.5, show_default=True, help="Seconds between heartbeats, both ways.")
@click.option(
    "--corpus-size",
    type=Size(),
    default="20M",
    show_default=True,
    help="Size of the corpus generated when no INPUTS are given.",
)
@click.option(
    "--events-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep each run's event log and worker logs here.",
)
@click.option(
    "--kill-coordinator",
    is_flag=True,
    help="Kill the coordinator instead of workers: a coordinator with --state-dir and workers started apart, "
    "the coordinator SIGKILLed each round (or paused and superseded) and started again until the job is done.",
)
@click.option(
    "--kill-points",
    default="mid-map,mid-reduce,after-commit:1,before-success,zombie,queued",
    show_default=True,
    help="With --kill-coordinator: where rounds kill it, in turn (mid-map, mid-reduce, after-map:N, "
    "after-commit:N, before-success, zombie; queued: a standing cluster's service, jobs in its queue).",
)
def crashtest(
    app,
    inputs,
    mrjob_job,
    mapper,
    reducer,
    combiner,
    defines,
    stream_inputs,
    files,
    workers,
    rounds,
    kill_every,
    pause_probability,
    seed,
    n_reduce,
    split_size,
    params,
    worker_timeout,
    heartbeat_interval,
    corpus_size,
    events_dir,
    kill_coordinator,
    kill_points,
):
    """Run APP (default wordcount) round after round while workers are killed and paused,
    and check every round's output against `mapreduce seq`. With no INPUTS, a corpus is
    generated. With --mapper, the job is a Hadoop Streaming job instead, over its --inputs
    (options as `mapreduce streaming` takes them); with --mrjob, an mrjob job over the inputs
    its arguments name. With --kill-coordinator, the coordinator is killed instead (a Python
    APP; INPUTS or --input). Exits 0 only if every round matched."""
    from mapreduce.tools import crashtest as ct

    if kill_coordinator:
        given = {
            "--mrjob": mrjob_job,
            "--mapper": mapper,
            "--reducer": reducer,
            "--combiner": combiner,
            "-D": defines,
        }  # fmt: skip
        _crashtest_coordinator(
            app or "wordcount",
            (*inputs, *stream_inputs),
            [name for name, value in given.items() if value],
            files=tuple(files),
            workers=workers,
            rounds=rounds,
            seed=seed,
            n_reduce=n_reduce,
            split_size=split_size,
            params=params,
            worker_timeout=worker_timeout,
            heartbeat_interval=heartbeat_interval,
            corpus_size=corpus_size,
            events_dir=events_dir,
            kill_points=kill_points,
        )
        return
    rounds = 3 if rounds is None else rounds
    if mrjob_job is not None:
        job, job_inputs, shipped, n_reduce = _guard(
            lambda: _crashtest_mrjob(
                mrjob_job,
                n_reduce,
                {
                    "APP": app,
                    "--mapper": mapper,
                    "--reducer": reducer,
                    "--combiner": combiner,
                    "-D": defines,
                    "--input": stream_inputs,
                    "--param": params,
                },  # fmt: skip
            )
        )
        files = (*shipped, *files)
    else:
        job, job_inputs = _guard(
            lambda: _crashtest_job(
                app, inputs, params, mapper, reducer, combiner, defines, stream_inputs, files, n_reduce
            )
        )
    options = ct.CrashTestOptions(
        app=job,
        inputs=job_inputs,
        workers=workers,
        rounds=rounds,
        kill_every=kill_every,
        pause_probability=pause_probability,
        seed=seed,
        n_reduce=n_reduce,
        split_size=split_size,
        params=_params(params),
        files=tuple(files),
        worker_timeout=worker_timeout,
        heartbeat_interval=heartbeat_interval,
        corpus_size=corpus_size,
        events_dir=events_dir,
    )
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("mapreduce.coordinator.scheduler").setLevel(
            logging.ERROR
        )  # dead workers are the point here: -v shows them
    report = _crash_rounds(lambda: ct.CrashTest(options), ct.format_header, ct.format_row)
    click.echo(ct.format_totals(report))
    click.echo(ct.format_overhead(report))
    click.echo(ct.format_latency(report, worker_timeout))
    _crashtest_verdict(report)


def _crash_rounds(make_test, header, row):
    """Make a crash test (its checks of the options first) and run its rounds, printing the
    table as they end (the header first)."""
    shown = []

    def show(result) -> None:
        if not shown:
            click.echo(header())
        click.echo(row(result))
        shown.append(result)

    return _guard(
        lambda: make_test().run(show, lambda stage: click.echo(stage, err=True)),
        interrupted="every process stopped, scratch data removed",
        failed="crashtest failed",
    )


def _crashtest_verdict(report) -> None:
    problem = report.first_problem()
    if problem is not None:
        click.echo(f"crashtest failed: {problem}", err=True)
        sys.exit(1)


def _crashtest_coordinator(app: str, inputs: tuple[str, ...], others: list[str], kill_points: str, **given) -> None:
    """`crashtest --kill-coordinator`: the rounds, their table, the totals; exit 1 if one went wrong."""
    from mapreduce.tools import coordcrash as cc

    if others:
        _guard(
            lambda: _usage(
                f"--kill-coordinator runs a Python APP as `mapreduce coordinator` does: it takes no {', '.join(others)}"
            )
        )
    points = _guard(lambda: cc.parse_kill_points(kill_points))
    if given["rounds"] is None:
        given["rounds"] = len(points)
    options = cc.CoordCrashOptions(
        app=app,
        inputs=inputs,
        kill_points=points,
        params=_params(given.pop("params")),
        **given,
    )
    report = _crash_rounds(lambda: cc.CoordinatorCrashTest(options), cc.format_header, cc.format_row)
    click.echo(cc.format_totals(report))
    click.echo(cc.format_needless(report))
    _crashtest_verdict(report)


def _crashtest_job(
    app: str | None,
    inputs: tuple[str, ...],
    params: tuple[str, ...],
    mapper: str | None,
    reducer: str | None,
    combiner: str | None,
    defines: tuple[str, ...],
    stream_inputs: tuple[str, ...],
    files: tuple[str, ...],
    n_reduce: int | None,
) -> tuple[str | App, tuple[str, ...]]:
    """What `mapreduce crashtest` runs, over which inputs: APP (default wordcount) over INPUTS,
    or with --mapper the streaming job over its --inputs. UsageError for options of the other kind."""
    if mapper is None:
        streaming_only = [
            name
            for name, given in (
                ("--reducer", reducer is not None),
                ("--combiner", combiner is not None),
                ("-D", bool(defines)),
                ("--input", bool(stream_inputs)),
            )
            if given
        ]
        if streaming_only:
            raise UsageError(
                f"{', '.join(streaming_only)} {'is' if len(streaming_only) == 1 else 'are'} for a streaming job: "
                "give its --mapper too"
            )
        return app or "wordcount", inputs
    if app is not None:
        given = " ".join((app, *inputs))
        raise UsageError(
            f"--mapper makes the job a streaming job, which takes no APP or INPUTS (got {given!r}): "
            "give its inputs with --input"
        )
    if params:
        raise UsageError("--param is for an APP's init(params): a streaming job's settings are -D NAME=VALUE")
    return _streaming_app(mapper, reducer, combiner, defines, files, n_reduce), stream_inputs


def _crashtest_mrjob(
    command: str, n_reduce: int | None, others_given: dict[str, object]
) -> tuple[App, tuple[str, ...], tuple[str, ...], int | None]:
    """The app of `crashtest --mrjob 'JOB.py ARGS'`, its inputs, the files it ships and its
    first reduce count; UsageError for what only another kind of job takes (``others_given``)."""
    from mapreduce import mrjobs
    from mapreduce.streaming import parse_command

    others = [name for name, given in others_given.items() if given]
    if others:
        raise UsageError(f"--mrjob names the job and its inputs: it takes no {', '.join(others)}")
    script, *job_args = parse_command(command, "--mrjob")
    run = mrjobs.load(script, job_args, n_reduce)
    return run.app, run.inputs, run.files, run.n_reduce


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _with_progress(quiet: bool, job):
    """Run job(progress) under _guard, with a progress display unless quiet."""
    progress = None if quiet else Progress()
    try:
        return _guard(lambda: job(progress))
    finally:
        if progress:
            progress.close()


def _guard(
    action,
    interrupted: str = "every worker stopped, no output committed beyond what is listed",
    failed: str = "job failed",
):
    """Run an action, turning expected errors into one plain message and exit status."""
    try:
        return action()
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {interrupted}", err=True)
        sys.exit(130)
    except JobFailed as exc:
        click.echo(f"\n{failed}: {exc}", err=True)
        sys.exit(1)
    except MapReduceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


class Progress:
    """Progress of a job: a bar redrawn in place on a terminal, else a plain line now and then
    (and at each change of phase), so logs of unattended runs show it too."""

    def __init__(self, stream=sys.stderr, every: float = 0.2, every_plain: float = 5.0):
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every if self.tty else every_plain
        self._last = 0.0
        self._phase = ""
        self._shown = False

    def __call__(self, view: JobView) -> None:
        now = time.monotonic()
        maps, reduces, c = view.maps, view.reduces, view.tally
        phase = "maps" if maps.done < maps.total else f"reduces {view.step}"
        if now - self._last < self.every and phase == self._phase:
            return
        self._last, self._phase = now, phase
        elapsed = max(view.elapsed, 1e-9)
        rate = f"{c.input_done / elapsed / 1e6:.1f} MB/s"
        workers = f"workers {view.workers_live}" + (f" (dead {c.workers_dead})" if c.workers_dead else "")
        if view.steps > 1:  # a pipeline: which step runs, and its reduces are every step's
            workers = f"step {view.step}/{view.steps}, {workers}"
        if self.tty:
            line = (
                f"maps {_bar(maps.done, maps.total)} {maps.done}/{maps.total}  "
                f"reduces {_bar(reduces.done, reduces.total)} {reduces.done}/{reduces.total}  {rate}  {workers}"
            )
            self.stream.write("\r" + line.ljust(100))
        else:
            self.stream.write(
                f"progress {elapsed:.1f} s: maps {maps.done}/{maps.total}, reduces {reduces.done}/{reduces.total}, "
                f"{rate}, {workers}\n"
            )
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


@cli.command(hidden=True)
def coordinators() -> None:
    """Fork a job's coordinator for each order on stdin: a standing cluster's service starts
    this once, so that no job waits for an interpreter to start (mapreduce/service/forkserver.py)."""
    # The imports a cold start would do after the job came.
    import mapreduce.coordinator.loop
    import mapreduce.runner  # noqa: F401
    from mapreduce.service.forkserver import serve_forks

    sys.exit(serve_forks(lambda argv: cli.main(args=argv, prog_name="mapreduce")))


def main() -> None:
    cli(prog_name="mapreduce")
