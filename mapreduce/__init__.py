"""mapreduce: a MapReduce framework over ZeroMQ.

The public API: run a job on a local cluster (``run_local``), serve it to
external workers (``serve``), or run it sequentially (``run_seq``).
"""

from .errors import AppError, JobFailed, MapReduceError, ProtocolError, UsageError
from .job import App, load_app, stable_partition
from .output import read_output
from .runner import JobOptions, run_local, run_seq, serve

__all__ = [
    "App", "AppError", "JobFailed", "JobOptions", "MapReduceError", "ProtocolError", "UsageError",
    "load_app", "read_output", "run_local", "run_seq", "serve", "stable_partition",
]
__version__ = "0.1.0"
