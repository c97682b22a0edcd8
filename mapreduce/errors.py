"""The exceptions a user of mapreduce can catch.

MapReduceError
 +-- UsageError       bad input detected before any work starts (files, app, output folder)
 +-- AppError         the app cannot be loaded or breaks the app contract
 +-- JobFailed        the job ran but could not finish (user code kept raising, workers lost)
 +-- ProtocolError    a malformed or unexpected message arrived from the network
"""


class MapReduceError(Exception):
    """Base class of every error mapreduce raises on purpose."""


class UsageError(MapReduceError):
    """Something the user asked for cannot be done; nothing was started or changed."""


class AppError(UsageError):
    """The app cannot be loaded or does not follow the app contract."""


class JobFailed(MapReduceError):
    """The job stopped without committing its output."""


class ProtocolError(MapReduceError):
    """A message from the network failed validation."""
