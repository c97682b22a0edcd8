"""Word count that leaves traces in its worker's interpreter: a module global set on a module
of the framework, an environment variable, a thread that never ends."""

import os
import threading
import time

import mapreduce.job


def init(params):
    mapreduce.job.LEFT_BEHIND = "by the leaky job"
    os.environ["LEFT_BEHIND"] = "by the leaky job"
    threading.Thread(target=time.sleep, args=(3600,), name="left-behind", daemon=True).start()


def map(key, text):
    for word in text.split():
        yield word, 1


def reduce(key, values):
    return sum(values)
