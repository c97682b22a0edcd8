"""Workers that cannot see the coordinator's files, and workers that leave.

A worker started with ``unshare -m`` has a mount namespace of its own (another
host id) but still sees the coordinator's files, so it uses them directly
(tests/test_multihost.py hides them, on separate network namespaces). Then: a
worker told to leave with SIGTERM drains without failing anything, and a worker
whose data server cannot be reached is refused with a clear message.
"""

from __future__ import annotations

import signal

import zmq

from helpers import SLEEPY, assert_same_output, free_endpoint, needs_unshare, of, words_file
from mapreduce.wire import messages as p

OTHER_HOST = ("unshare", "-m")


@needs_unshare
def test_workers_in_other_mount_namespaces_that_see_the_files_use_them_directly(gutenberg, oracle, make_job, tmp_path):
    """Another mount namespace (another host id) that still sees the same files: a worker
    reads its inputs and writes its output directly, and fetches map output it cannot be
    sure it sees from the other worker's data server."""
    expected = oracle("wordcount", gutenberg, "--reduce", "5", "--split-size", "1M")
    job = make_job("wordcount", gutenberg, "--reduce", "5", "--split-size", "1M")
    workers = [job.worker(scratch=str(tmp_path / f"scratch-{i}"), wrap=OTHER_HOST) for i in range(2)]
    log = job.finish()
    assert_same_output(expected, job.out)
    assert [w.wait(timeout=30) for w in workers] == [0, 0]
    (finished,) = of(log, "job_finished")
    assert finished["input_fetched"] == 0 and finished["output_pulled"] == 0
    assert finished["shuffle_fetched"] > 0
    assert sorted(n.name for n in job.out.iterdir()) == ["_SUCCESS", *(f"part-{i:05d}" for i in range(5))]


def test_sigterm_drains_a_worker_without_failing_anything(tmp_path, oracle, make_job):
    inputs = [words_file(tmp_path, "slow.txt"), *(words_file(tmp_path, f"in{i}.txt") for i in range(5))]
    started = tmp_path / "started"
    started.mkdir()
    params = ["--param", "map_seconds=1.5", "--param", "only_inputs=slow"]
    expected = oracle(SLEEPY, inputs, "--reduce", "3", *params)
    job = make_job(SLEEPY, inputs, "--reduce", "3", *params, "--param", f"started={started}")
    leaving = job.worker(scratch=str(tmp_path / "leaving"))
    log = job.wait_for(
        lambda log: of(log, "task_assigned", worker=1) and (started / "slow.txt").exists(),
        "the first worker's first map running",
    )
    attempt = of(log, "task_assigned", worker=1)[0]["attempt"]
    leaving.send_signal(signal.SIGTERM)  # the first map is running: it must finish
    assert leaving.wait(timeout=60) == 0, leaving.stderr.read()
    log = job.wait_for(lambda log: of(log, "worker_left", worker=1), "the drained worker's goodbye")
    assert of(log, "worker_draining", worker=1) and of(log, "worker_left", worker=1)
    assert of(log, "task_finished", attempt=attempt), "the map it was running finished"
    assert len({e["attempt"] for e in of(log, "task_assigned", worker=1)}) == 1, "a draining worker gets no new task"
    job.worker(scratch=str(tmp_path / "staying"))
    log = job.finish()
    assert_same_output(expected, job.out)
    assert not of(log, "task_lost") and not of(log, "worker_dead") and not of(log, "task_failed")


def test_draining_worker_hands_back_a_reduce_waiting_for_maps(tmp_path, oracle, make_job):
    slow = words_file(tmp_path, "slow.txt")
    inputs = [slow, *(words_file(tmp_path, f"in{i}.txt") for i in range(3))]
    params = ["--param", "map_seconds=4", "--param", "only_inputs=slow"]
    expected = oracle(SLEEPY, inputs, "--reduce", "2", *params)
    job = make_job(SLEEPY, inputs, "--reduce", "2", *params)
    job.worker(scratch=str(tmp_path / "a"))
    job.worker(scratch=str(tmp_path / "b"))
    log = job.wait_for(lambda log: of(log, "task_assigned", phase="reduce"), "a reduce waiting for the slow map")
    reducer = of(log, "task_assigned", phase="reduce")[0]["worker"]
    pid = job.pid(reducer)
    target = next(w for w in job.processes if w.pid == pid)
    target.send_signal(signal.SIGTERM)
    assert target.wait(timeout=30) == 0
    log = job.log()
    assert of(log, "task_cancelled", worker=reducer), "the waiting reduce was handed back"
    job.worker(scratch=str(tmp_path / "c"))
    log = job.finish()
    assert_same_output(expected, job.out)
    assert not of(log, "task_lost") and not of(log, "worker_dead")


def test_worker_with_unreachable_data_server_is_refused(tmp_path):
    """A worker on another host advertising an address nobody answers at is told so, not used."""
    from helpers import Job

    job = Job(tmp_path, SLEEPY, [words_file(tmp_path, "in.txt")])
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(job.endpoint)
        dead = free_endpoint()  # nothing listens there
        dealer.send(p.encode(p.Register("far", 1, "far-host", "another-host-id", dead, "/scratch")))
        assert dealer.poll(30_000), "no answer to the registration"
        answer = p.decode(dealer.recv(), p.COORDINATOR_MESSAGES)
        assert isinstance(answer, p.Refused)
        assert dead in answer.reason and "--advertise" in answer.reason
        assert not of(job.log(), "worker_joined")
    finally:
        dealer.close(0)
        context.term()
        job.stop_all()
