"""mapreduce: a MapReduce framework over ZeroMQ.

The public API: run a job on a local cluster (``run_local``), serve it to
external workers (``serve``), or run it sequentially (``run_seq``).
"""

from mapreduce.errors import AppError, JobFailed, MapReduceError, ProtocolError, UsageError

# Imported on first use: a worker process needs none of the coordinator's side.
_LAZY = {
    "App": "job",
    "Record": "job",
    "Step": "job",
    "increment": "counters",
    "identity": "job",
    "NO_VALUE": "job",
    "load_app": "job",
    "stable_partition": "job",
    "read_output": "output",
    "JobOptions": "runner",
    "run_local": "runner",
    "run_seq": "runner",
    "serve": "runner",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "App",
    "AppError",
    "JobFailed",
    "JobOptions",
    "MapReduceError",
    "NO_VALUE",
    "ProtocolError",
    "Record",
    "Step",
    "UsageError",
    "identity",
    "increment",
    "load_app",
    "read_output",
    "run_local",
    "run_seq",
    "serve",
    "stable_partition",
]
__version__ = "0.1.0"
