"""A standing cluster's client: one request, one validated answer.

Over the network a client proves a key of its own (``clients/NAME.key_secret``, admitted
by its public key on the cluster's host); on the cluster's host its own user may use the
private socket in the state folder instead, without keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

from mapreduce.errors import ProtocolError, UsageError
from mapreduce.net.security import Keys, load_client
from mapreduce.service.addresses import clients_endpoint, default_state_dir, private_endpoint
from mapreduce.wire import messages as p

ANSWER_TIMEOUT = 10.0  # seconds a request waits for the service before the client gives up


class ClusterClient:
    def __init__(
        self,
        cluster: str | None = None,
        key_dir: str | Path | None = None,
        key_name: str | None = None,
        state_dir: str | Path | None = None,
        timeout: float = ANSWER_TIMEOUT,
    ):
        self.timeout = timeout
        keys: Keys | None = None
        if cluster is not None:
            if key_dir is None:
                raise UsageError("a cluster's address (--cluster) needs a client key: --key-dir DIR")
            keys = load_client(key_dir, key_name)
            self.endpoint = clients_endpoint(cluster)
        else:
            folder = Path(state_dir) if state_dir is not None else default_state_dir()
            if not (folder / "control").exists():
                raise UsageError(
                    f"no cluster runs here with state folder {str(folder)!r}: start one with `mapreduce cluster "
                    "start`, or give a remote cluster's address with --cluster and --key-dir"
                )
            self.endpoint = private_endpoint(folder)
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        if keys is not None:
            keys.connect_to(self.socket, keys.coordinator)
        self.socket.connect(self.endpoint)

    def ask(self, request):
        """Send ``request``; the service's answer (JobInfo, JobList), or a UsageError saying why not."""
        self.socket.send(p.encode(request))
        if not self.socket.poll(self.timeout * 1000):
            raise UsageError(
                f"no answer from the cluster at {self.endpoint} within {self.timeout:.0f} s (is it running, and is "
                "this client's key admitted in its key folder's clients/?)"
            )
        try:
            answer = p.decode(self.socket.recv(), p.SERVICE_MESSAGES)
        except ProtocolError as exc:
            raise UsageError(f"the cluster's answer was malformed: {exc}") from None
        if isinstance(answer, p.Declined):
            raise UsageError(answer.reason)
        return answer

    def close(self) -> None:
        self.socket.close(0)

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def submission(app: str, inputs, output: str, files=(), **options) -> p.SubmitJob:
    """A SubmitJob for an app and paths as this client names them: relative ones made absolute
    (they are paths on the cluster's host, so this is right for a client on that host); an app
    that is a file here travels as its source."""
    source = ""
    if app.endswith(".py") or os.sep in app:
        source, app = _source(app), Path(app).name
    return p.SubmitJob(app, _absolute(inputs), os.path.abspath(output), source, files=_side(files), **options)


def streaming_submission(inputs, output: str, mapper: str, reducer, combiner, defines, files=(), **options):
    """A SubmitJob for a streaming job (its commands run on the workers as given)."""
    return p.SubmitJob(
        "",
        _absolute(inputs),
        os.path.abspath(output),
        kind=p.JobKind.STREAMING,
        mapper=mapper,
        reducer=reducer or "",
        combiner=combiner or "",
        defines=list(defines),
        files=_side(files),
        **options,
    )


def mrjob_submission(script: str, job_args, inputs, output: str, files=(), **options) -> p.SubmitJob:
    """A SubmitJob for an mrjob job: its script travels as its source; its arguments as given,
    but for its input paths (``inputs``, as the job read them), made absolute."""
    given = set(inputs)
    args = [os.path.abspath(a) if a in given else a for a in job_args]
    return p.SubmitJob(
        Path(script).name,
        [],
        os.path.abspath(output),
        _source(script),
        kind=p.JobKind.MRJOB,
        job_args=args,
        files=_side(files),
        **options,
    )


def _source(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}") from None


def _absolute(paths) -> list[str]:
    return [os.path.abspath(path) for path in paths]


def _side(files) -> list[str]:
    """Side files (PATH[#NAME]) with PATH made absolute."""
    side = []
    for spec in files:
        path, hash_sign, name = spec.partition("#")
        side.append(os.path.abspath(path) + hash_sign + name)
    return side
