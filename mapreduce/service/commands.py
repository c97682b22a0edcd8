"""The standing cluster's commands: `cluster start|stop`, `submit`, `jobs`, `cancel`."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click

from mapreduce import defaults
from mapreduce.errors import UsageError
from mapreduce.output import Compression


def _guarded(action):
    try:
        return action()
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


# Shared with `streaming` and `mrjob`, which submit with --cluster or --submit.
STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MAPREDUCE_STATE_DIR",
    help="The standing cluster on this host, by its state folder [default: ~/.local/state/mapreduce/cluster].",
)
KEY_NAME_OPTION = click.option(
    "--key-name", envvar="MAPREDUCE_KEY_NAME", help="Which client key pair in --key-dir (if several)."
)


def _client_options(f):
    options = [
        click.option(
            "--cluster",
            metavar="ENDPOINT",
            help="The cluster's address (tcp://HOST:PORT, as workers are given); needs --key-dir. "
            "Default: the cluster on this host, by its state folder.",
        ),
        click.option(
            "--key-dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="MAPREDUCE_KEY_DIR",
            help="Folder with this client's key pair (clients/NAME.key_secret) and the cluster's public key.",
        ),
        KEY_NAME_OPTION,
        STATE_DIR_OPTION,
        click.option(
            "--timeout",
            type=float,
            default=10.0,
            show_default=True,
            help="Seconds to wait for the cluster's answer to a request.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _client(cluster, key_dir, key_name, state_dir, timeout):
    from mapreduce.service.client import ClusterClient

    return _guarded(lambda: ClusterClient(cluster, key_dir, key_name, state_dir, timeout))


@click.group()
def cluster() -> None:
    """A standing cluster: start it once, submit jobs to it all day."""


@cluster.command()
@click.option("--bind", default="tcp://127.0.0.1:5555", show_default=True, help="Where workers connect.")
@click.option(
    "--key-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MAPREDUCE_KEY_DIR",
    help="The cluster's keys (mapreduce keygen): workers and clients are admitted by their public keys. "
    "Clients then reach the cluster on the port after --bind's.",
)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --bind without keys (a trusted network only).")
@click.option("--workers", "-w", default=0, show_default=True, help="Local workers to start (they stay).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MAPREDUCE_STATE_DIR",
    help="Jobs' folders (app, coordinator log, event log) [default: ~/.local/state/mapreduce/cluster].",
)
@click.option("--heartbeat-interval", type=float, default=defaults.HEARTBEAT_INTERVAL, show_default=True)
@click.option(
    "--status-port",
    type=click.IntRange(1, 65534),
    default=None,
    help="Serve the cluster's page (its jobs) on this port, and the running job's live page on the next.",
)
@click.option("--status-bind", default="127.0.0.1", show_default=True, help="Address the status page listens on.")
def start(bind, key_dir, insecure, workers, state_dir, heartbeat_interval, status_port, status_bind):
    """Run the cluster's service in the foreground until `cluster stop` or SIGTERM: jobs run one
    after another, first come first served, on the workers that connect to --bind with --stay."""
    from mapreduce.net.node import endpoint_host
    from mapreduce.net.security import check_exposure
    from mapreduce.service.addresses import default_state_dir
    from mapreduce.service.server import Service, ServiceOptions

    _guarded(lambda: check_exposure("the cluster's address", endpoint_host(bind), True if key_dir else None, insecure))
    status = (status_bind, status_port) if status_port else None
    options = ServiceOptions(bind, state_dir or default_state_dir(), key_dir, workers, heartbeat_interval, (), status)
    service = _guarded(lambda: Service(options))
    click.echo(f"cluster on {bind} (workers), clients at {', '.join(service.addresses)}", err=True)
    if status_port:
        click.echo(
            f"cluster page: http://{status_bind}:{status_port}/ (the running job's: port {status_port + 1})", err=True
        )
    sys.exit(service.run())


@cluster.command()
@_client_options
@click.option("--cancel", "cancel_running", is_flag=True, help="Cancel the running job too, not only the queue.")
def stop(cluster, key_dir, key_name, state_dir, timeout, cancel_running):
    """Stop the cluster: queued jobs are cancelled, the running one finishes (or is cancelled with
    --cancel), then the workers that stay are told to leave and the service exits."""
    from mapreduce.wire.messages import StopCluster

    with _client(cluster, key_dir, key_name, state_dir, timeout) as client:
        listing = _guarded(lambda: client.ask(StopCluster(cancel_running)))
    running = [j.job_id for j in listing.jobs if not j.state.over]
    click.echo(f"stopping{': waiting for ' + ', '.join(running) if running else ''}", err=True)


@click.command()
@click.argument("app")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, help="Output folder on the cluster's host.")
@click.option("--reduce", "-r", "n_reduce", type=int, default=None, help="Number of reduce tasks.")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help="For the app's init(params).")
@click.option("--split-size", type=int, default=0, help="Largest input split in bytes [default: the cluster's].")
@click.option("--overwrite", is_flag=True, help="Replace the part-* files of an earlier job in the output folder.")
@click.option("--compress", type=click.Choice([c.value for c in Compression]), default=Compression.NONE.value)
@click.option("--file", "files", multiple=True, metavar="PATH[#NAME]", help="A side file (on the cluster's host).")
@click.option("--max-attempts", type=int, default=0, help="Failures per task before the job fails.")
@click.option("--skip-bad-records", type=int, default=0, help="Records a task may skip.")
@click.option("--detach", "-d", is_flag=True, help="Print the job's id and return at once.")
@_client_options
def submit(app, inputs, output, detach, cluster, key_dir, key_name, state_dir, timeout, **options):
    """Submit a job to a standing cluster and follow it to its end (exit status: the job's), or
    --detach. Paths are paths on the cluster's host; relative ones are made absolute here. An app
    that is a file here is sent as its source. (`streaming` and `mrjob` submit with --cluster or
    --submit.)"""
    from mapreduce.service.client import submission

    options["compress"] = Compression(options["compress"])
    options["params"] = list(options["params"])
    sys.exit(
        send(lambda: submission(app, inputs, output, **options), detach, cluster, key_dir, key_name, state_dir, timeout)
    )


def send(request, detach: bool, cluster, key_dir, key_name, state_dir, timeout) -> int:
    """Submit ``request()`` (a SubmitJob) and follow the job to its end, printing its states;
    return the exit status: 0 succeeded, 1 failed or cancelled (2 if refused: exits at once)."""
    from mapreduce.wire.messages import JobState, WatchJob

    submitted = _guarded(request)
    with _client(cluster, key_dir, key_name, state_dir, timeout) as client:
        info = _guarded(lambda: client.ask(submitted))
        if detach:
            click.echo(info.job_id)
            return 0
        click.echo(f"{info.job_id} {info.state.value}", err=True)
        try:
            while not info.state.over:  # each answer comes when the state changes (or every 5 s)
                known = info.state
                info = _guarded(lambda watch=WatchJob(info.job_id, known, 5.0): client.ask(watch))
                if info.state is not known and not info.state.over:
                    click.echo(f"{info.job_id} {info.state.value}", err=True)
        except KeyboardInterrupt:
            click.echo(f"{info.job_id} goes on; cancel it with `mapreduce cancel {info.job_id}`", err=True)
            return 130
    took = f" in {info.finished - info.started:.2f} s" if info.started else ""
    click.echo(f"{info.job_id} {info.state.value}{took}: {info.message}", err=True)
    return 0 if info.state is JobState.SUCCEEDED else 1


@click.command()
@_client_options
def jobs(cluster, key_dir, key_name, state_dir, timeout):
    """The cluster's jobs: queued, running and finished, oldest first."""
    from mapreduce.wire.messages import ListJobs

    with _client(cluster, key_dir, key_name, state_dir, timeout) as client:
        listing = _guarded(lambda: client.ask(ListJobs()))
    now = time.time()
    click.echo(f"{'JOB':<11} {'STATE':<10} {'SUBMITTED':<9} {'SECONDS':>8}  {'APP':<16} OUTPUT / MESSAGE")
    for job in listing.jobs:
        seconds = (job.finished or now) - job.started if job.started else 0.0
        submitted = datetime.fromtimestamp(job.submitted).strftime("%H:%M:%S")
        detail = job.output if job.state.value in ("queued", "running", "succeeded") else job.message
        click.echo(f"{job.job_id:<11} {job.state.value:<10} {submitted:<9} {seconds:>8.2f}  {job.app:<16} {detail}")
    if listing.stopping:
        click.echo("the cluster is stopping", err=True)


@click.command()
@click.argument("job_id")
@_client_options
def cancel(job_id, cluster, key_dir, key_name, state_dir, timeout):
    """Cancel a queued or running job: a running one's workers drop it, and its output folder
    is left as it was before (no part file)."""
    from mapreduce.wire.messages import CancelJob, JobState, WatchJob

    with _client(cluster, key_dir, key_name, state_dir, timeout) as client:
        info = _guarded(lambda: client.ask(CancelJob(job_id)))
        while info.state is JobState.RUNNING:  # until its coordinator has cleaned up
            info = _guarded(lambda: client.ask(WatchJob(job_id, JobState.RUNNING, 5.0)))
    click.echo(f"{info.job_id} {info.state.value}{': ' + info.message if info.message else ''}")
    sys.exit(0 if info.state is JobState.CANCELLED else 1)
