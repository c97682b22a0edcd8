"""Every tunable's default, in one place: the command line, the scheduler's settings, the
worker's options and the runner all read them from here."""

# Heartbeats and failure detection (both sides).
HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats, both ways
WORKER_TIMEOUT = 5.0  # silence after which the coordinator declares a worker dead
SUSPECT_AFTER_HEARTBEATS = 2.5  # silence, in heartbeat intervals, before a worker counts as suspect
COORDINATOR_TIMEOUT = 20.0  # silence after which a worker gives up on its coordinator
LIVENESS = 3  # heartbeats missed before a worker reconnects
MAX_BACKOFF = 8.0  # the longest wait between a worker's reconnects
DRAIN_TIMEOUT = 30.0  # on SIGTERM, how long a worker's current task may take to finish
CANCEL_GRACE = 10.0  # how long cancelled user code may take to return before its worker restarts
HANDSHAKE_TIMEOUT = 5.0  # connected but not authenticated for this long: the keys do not match
FETCH_TIMEOUT = 5.0  # a data server silent for this long is unreachable

# Jobs.
N_REDUCE = 8
SPLIT_SIZE = 16 * 1024 * 1024
MAX_ATTEMPTS = 4  # failures of the user's code per task before the job fails
MAX_WORKER_LOSSES = 8  # losses of a task for its workers' sake before the job fails
MIN_WORKERS = 1
SPECULATION = True
# A straggler has run SLOW_FACTOR times the median of its phase and SLOW_MARGIN seconds more.
SLOW_FACTOR = 2.0
SLOW_MARGIN = 0.5
