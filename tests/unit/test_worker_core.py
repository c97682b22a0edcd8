"""The worker's decisions as a pure state machine: an injected clock, real wire messages."""

from __future__ import annotations

import dataclasses

from mapreduce.wire import messages as p
from mapreduce.worker.core import (
    AttemptFinished,
    AttemptReported,
    CancelAttempt,
    Connect,
    Connected,
    DeliverOutputs,
    Discard,
    DrainAsked,
    Exit,
    ExitCode,
    GarbageReceived,
    HandshakeFailed,
    HandshakeSucceeded,
    JoinJob,
    MessageReceived,
    Report,
    Restart,
    RunAttempt,
    Send,
    Settings,
    Started,
    Tick,
    WorkerCore,
    WorkerState,
)
from mapreduce.worker.tasks import StatusReports

SETTINGS = Settings(
    heartbeat_interval=1.0,
    liveness=3,
    coordinator_timeout=20.0,
    max_backoff=8.0,
    drain_timeout=30.0,
    cancel_grace=10.0,
    handshake_timeout=5.0,
    has_keys=True,
    coordinator="tcp://10.0.0.1:5555",
)
# A coordinator that never goes quiet for long: for tests about anything but silence.
PATIENT = dataclasses.replace(SETTINGS, liveness=1000, coordinator_timeout=10_000.0)
REGISTER = p.Register("w", 42, "host", "host-id", "tcp://10.0.0.2:6000", "/scratch")
INCARNATION = 7
AGAIN = dataclasses.replace(REGISTER, job_id="job1")  # registering again, in job1


def welcome(worker: int = INCARNATION, job_id: str = "job1") -> p.Welcome:
    return p.Welcome(worker, job_id, b"app", 2, 1, 1.0, "/out", "host-id")


def assign_map(attempt: int = 11, task: int = 0) -> p.AssignMap:
    return p.AssignMap(attempt, task, "in.txt", "/data/in.txt", 0, 100)


def assign_reduce(attempt: int = 21) -> p.AssignReduce:
    return p.AssignReduce(attempt, 0, [])


def done(attempt: int) -> p.TaskDone:
    return p.TaskDone(0, attempt, [3, 4], "/scratch/map-output.log", 7)


class Driver:
    """A WorkerCore and the instructions it gave, driven by hand."""

    def __init__(self, settings: Settings = SETTINGS):
        self.core = WorkerCore(settings, REGISTER)

    def at(self, now: float, event=None) -> list:
        return self.core.handle(Tick() if event is None else event, now)

    def message(self, now: float, message) -> list:
        return self.at(now, MessageReceived(message))

    def welcomed(self, now: float = 0.0) -> None:
        """Started and registered as INCARNATION at ``now``."""
        assert self.at(now, Started()) == [Connect(), Send(REGISTER)]
        assert self.message(now, welcome()) == [JoinJob(welcome())]
        assert self.core.state is WorkerState.REGISTERED

    def run(self, now: float, assign) -> int:
        """Assign an attempt; return the run number the core asked the executor to start."""
        (start,) = [i for i in self.message(now, assign) if isinstance(i, RunAttempt)]
        assert start.assign == assign
        return start.run

    def ticks_until(self, end: float) -> list[tuple[float, list]]:
        """Tick at every deadline the core asks for up to ``end``: (time, instructions) of each."""
        seen = []
        while self.core.next_deadline() is not None and self.core.next_deadline() <= end:
            now = self.core.next_deadline()
            seen.append((now, self.at(now)))
        return seen


def notable(instructions: list) -> list:
    """The instructions other than the worker's own heartbeats."""
    return [i for i in instructions if not (isinstance(i, Send) and isinstance(i.message, p.Heartbeat))]


def heartbeats(instructions: list) -> list:
    return [i for i in instructions if isinstance(i, Send) and isinstance(i.message, p.Heartbeat)]


# ---- registering and heartbeats ---------------------------------------------


def test_start_connects_and_registers_then_heartbeats_every_interval_once_welcomed():
    d = Driver()
    assert d.at(0.0, Started()) == [Connect(), Send(REGISTER)]
    assert d.core.state is WorkerState.REGISTERING
    assert d.core.next_deadline() == 1.0
    assert d.at(1.0) == []  # no incarnation yet: nothing to heartbeat for
    assert d.message(1.5, welcome()) == [JoinJob(welcome())]
    assert d.at(1.9) == []
    assert d.at(2.0) == [Send(p.Heartbeat(INCARNATION))]
    assert d.core.next_deadline() == 3.0
    assert d.at(2.9) == []
    assert d.at(3.0) == [Send(p.Heartbeat(INCARNATION))]


def test_the_same_job_is_joined_once_and_a_new_job_again():
    d = Driver(PATIENT)
    d.welcomed()
    d.message(1.0, p.Unknown("restarted", INCARNATION))
    assert d.message(1.1, welcome(worker=8)) == []  # same job: already set up
    assert d.message(1.2, p.Unknown("restarted", 8)) == [Send(AGAIN)]
    assert d.message(1.3, welcome(worker=9, job_id="job2")) == [JoinJob(welcome(9, "job2"))]


# ---- reconnecting and giving up ----------------------------------------------


def test_reconnects_after_liveness_missed_heartbeats_with_doubling_backoff_capped_then_reset_when_heard():
    d = Driver(dataclasses.replace(SETTINGS, coordinator_timeout=100.0))
    d.welcomed(0.0)
    reconnects = [now for now, instructions in d.ticks_until(40.0) if Connect() in instructions]
    # 3 heartbeats of silence, then waits of 1, 2, 4, 8, 8, ... (capped at max_backoff).
    assert reconnects == [3.0, 4.0, 6.0, 10.0, 18.0, 26.0, 34.0]
    d.message(35.0, p.Heartbeat(0))  # heard again: the backoff starts over
    reconnects = [now for now, instructions in d.ticks_until(50.0) if Connect() in instructions]
    assert reconnects == [38.0, 39.0, 41.0, 45.0]


def test_reconnect_registers_again_on_the_new_connection_and_drops_the_running_attempt():
    d = Driver()
    d.welcomed(0.0)
    run = d.run(0.5, assign_map())
    assert notable(d.at(3.49)) == []
    assert notable(d.at(3.5)) == [CancelAttempt(run), Connect(), Send(AGAIN)]
    assert d.core.state is WorkerState.REGISTERING and d.core.incarnation is None
    # The dropped attempt's result is no one's any more: its output is thrown away.
    assert d.at(3.6, AttemptFinished(run, done(11))) == [Discard(done(11))]


def test_a_message_from_the_coordinator_even_a_malformed_one_postpones_the_reconnect():
    d = Driver()
    d.welcomed(0.0)
    d.message(2.0, p.Heartbeat(0))
    d.at(4.0, GarbageReceived("not msgpack"))
    assert Connect() not in d.at(6.9)
    assert Connect() in d.at(7.0)


def test_timers_run_after_everything_one_poll_found():
    """A worker paused past its reconnect time (SIGSTOP) wakes to its finished attempt and a
    coordinator message at once: the message counts, no reconnect, the result goes out."""
    d = Driver()
    d.welcomed(0.0)
    run = d.run(0.5, assign_map(11))
    instructions = d.core.handle_all([AttemptFinished(run, done(11)), MessageReceived(p.Heartbeat(0))], 5.0)
    assert instructions == [Report(dataclasses.replace(done(11), worker=INCARNATION)), Send(p.Heartbeat(INCARNATION))]


def test_gives_up_with_exit_3_after_coordinator_timeout_of_silence():
    d = Driver()
    d.welcomed(0.0)
    seen = d.ticks_until(100.0)
    exits = [(now, i) for now, instructions in seen for i in instructions if isinstance(i, Exit)]
    assert len(exits) == 1
    now, exit_ = exits[0]
    assert exit_.code is ExitCode.COORDINATOR_LOST
    # Reconnects at 3, 4, 6, 10, 18 (silence still under 20 s), then gives up at the next one.
    assert [t for t, instructions in seen if Connect() in instructions] == [3.0, 4.0, 6.0, 10.0, 18.0]
    assert now == 26.0
    assert d.core.state is WorkerState.STOPPED and d.core.next_deadline() is None
    assert d.at(27.0, MessageReceived(p.Heartbeat(0))) == []


def test_a_coordinator_heard_within_the_timeout_is_not_given_up_on():
    d = Driver()
    d.welcomed(0.0)
    d.ticks_until(18.0)
    d.message(19.0, p.Heartbeat(0))
    assert not any(isinstance(i, Exit) for _, instructions in d.ticks_until(38.0) for i in instructions)


# ---- the security handshake -----------------------------------------------------


def test_a_failed_handshake_exits_2_saying_why():
    d = Driver()
    d.welcomed(0.0)
    (exit_,) = d.at(1.5, HandshakeFailed("the coordinator does not accept this worker's key"))
    assert exit_.code is ExitCode.REFUSED
    assert "does not accept this worker's key" in exit_.why and "--key-dir" in exit_.why


def test_a_worker_without_keys_failing_the_handshake_is_told_it_needs_keys():
    d = Driver(dataclasses.replace(SETTINGS, has_keys=False))
    d.at(0.0, Started())
    (exit_,) = d.at(0.5, HandshakeFailed("the handshake failed"))
    assert exit_.code is ExitCode.REFUSED and "requires keys and this worker has none" in exit_.why


def test_a_handshake_that_never_completes_fails_after_the_handshake_timeout():
    d = Driver(PATIENT)
    d.at(0.0, Started())
    d.at(0.5, Connected())
    assert d.core.next_deadline() == 1.0
    assert notable(d.at(5.4)) == []
    assert d.core.next_deadline() == 5.5
    (exit_,) = notable(d.at(5.5))
    assert exit_.code is ExitCode.REFUSED and "no secure handshake within 5 s" in exit_.why


def test_a_completed_handshake_is_not_timed_out():
    d = Driver(PATIENT)
    d.at(0.0, Started())
    d.at(0.5, Connected())
    d.at(0.6, HandshakeSucceeded())
    d.message(0.7, welcome())
    d.message(2.0, p.Heartbeat(0))
    assert notable(d.at(5.5)) == []


# ---- what the coordinator says ---------------------------------------------------


def test_unknown_for_this_incarnation_registers_again_and_an_older_one_is_ignored():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    run = d.run(0.5, assign_map())
    assert d.message(0.6, p.Unknown("no such worker", INCARNATION - 1)) == []  # answers an older incarnation
    assert d.core.state is WorkerState.REGISTERED
    assert d.message(0.7, p.Unknown("no such worker", INCARNATION)) == [CancelAttempt(run), Send(AGAIN)]
    assert d.core.state is WorkerState.REGISTERING
    assert d.at(1.0) == []  # no incarnation to heartbeat for
    assert d.message(1.5, p.Unknown("no such worker", INCARNATION)) == []  # already registering again
    assert d.message(1.6, welcome(worker=8)) == []  # the same job: nothing to set up
    assert d.at(2.0) == [Send(p.Heartbeat(8))]


def test_refused_exits_2_with_the_reason():
    d = Driver()
    d.welcomed(0.0)
    assert d.message(0.5, p.Refused("data server unreachable")) == [Exit(ExitCode.REFUSED, "data server unreachable")]
    assert d.core.state is WorkerState.STOPPED


def test_job_done_says_goodbye_then_exits_0():
    d = Driver()
    d.welcomed(0.0)
    instructions = d.message(0.5, p.JobDone(True))
    assert instructions[0] == Send(p.Goodbye(INCARNATION))
    assert len(instructions) == 2 and instructions[1].code is ExitCode.DONE and instructions[1].job_over


def test_results_go_out_with_this_incarnation_and_outputs_reach_the_running_reduce():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    run = d.run(0.5, assign_reduce(21))
    output = p.MapOutput(0, 11, "host-id", "/scratch/map-output.log", "tcp://10.0.0.2:6000", 0, 7)
    assert d.message(0.6, p.MapOutputs(21, [output], [1])) == [DeliverOutputs(run, [output], [1])]
    assert d.message(0.7, p.MapOutputs(99, [output], [])) == []  # not this worker's attempt
    failed = p.FetchFailed(0, 21, 0, 11, "tcp://10.0.0.2:6000", "Unreachable")
    assert d.at(0.8, AttemptReported(run, failed)) == [Report(dataclasses.replace(failed, worker=INCARNATION))]
    result = p.TaskDone(0, 21, [], "part-00000.tmp", 3)
    assert d.at(0.9, AttemptFinished(run, result)) == [Report(dataclasses.replace(result, worker=INCARNATION))]
    assert d.core.current_run is None


def test_a_new_assignment_replaces_the_running_one():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    first = d.run(0.5, assign_map(11))
    instructions = d.message(1.0, assign_map(12, task=1))
    assert instructions[0] == CancelAttempt(first)
    (second,) = [i.run for i in instructions if isinstance(i, RunAttempt)]
    assert second != first
    # The first run's late result is thrown away, the second's reported.
    assert d.at(1.5, AttemptFinished(first, p.Cancelled(0, 11))) == [Discard(p.Cancelled(0, 11))]
    assert notable(d.at(2.5, AttemptFinished(second, done(12)))) == [
        Report(dataclasses.replace(done(12), worker=INCARNATION))
    ]


def test_no_assignment_is_run_before_registering():
    d = Driver()
    d.at(0.0, Started())
    assert d.message(0.5, assign_map()) == []


# ---- cancel and the restart of stuck user code -------------------------------------


def test_cancel_of_the_running_attempt_stops_it_and_its_answer_is_reported():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    run = d.run(0.5, assign_map(11))
    assert d.message(0.6, p.Cancel(99)) == []  # another attempt
    assert d.message(0.7, p.Cancel(11)) == [CancelAttempt(run)]
    assert d.message(0.8, p.Cancel(11)) == []  # told once is enough
    assert d.at(0.9, AttemptFinished(run, p.Cancelled(0, 11))) == [Report(p.Cancelled(INCARNATION, 11))]
    assert not any(isinstance(i, Restart) for _, instructions in d.ticks_until(50.0) for i in instructions)


def test_cancelled_user_code_that_does_not_return_within_the_grace_restarts_the_worker_not_before():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    d.run(0.5, assign_map(11))
    d.message(1.0, p.Cancel(11))
    assert d.core.next_deadline() == 2.0  # a heartbeat first: the grace ends at 11
    seen = d.ticks_until(10.99)
    assert not any(isinstance(i, Restart) for _, instructions in seen for i in instructions)
    assert d.core.next_deadline() == 11.0
    (restart,) = d.at(11.0)
    assert isinstance(restart, Restart) and "did not return" in restart.why
    assert d.core.state is WorkerState.STOPPED


def test_an_attempt_dropped_with_the_registration_must_return_within_the_grace_too():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    d.run(0.5, assign_map(11))
    d.message(1.0, p.Unknown("restarted", INCARNATION))
    d.message(1.1, welcome(8))
    assert not any(isinstance(i, Restart) for i in d.at(10.9))
    assert isinstance(d.at(11.0)[-1], Restart)


# ---- draining on SIGTERM ---------------------------------------------------------


def test_drain_with_no_attempt_says_draining_and_goodbye_and_exits_0():
    d = Driver()
    d.welcomed(0.0)
    assert d.at(1.5, DrainAsked(gathering=False)) == [
        Send(p.Draining(INCARNATION)),
        Send(p.Goodbye(INCARNATION)),
        Exit(ExitCode.DONE, "drained"),
    ]


def test_drain_before_registering_just_exits_0():
    d = Driver()
    d.at(0.0, Started())
    assert d.at(0.5, DrainAsked(gathering=False)) == [Exit(ExitCode.DONE, "drained")]


def test_drain_hands_back_a_reduce_still_gathering_at_once():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    run = d.run(0.5, assign_reduce(21))
    assert d.at(0.9, DrainAsked(gathering=True)) == [Send(p.Draining(INCARNATION)), CancelAttempt(run)]
    assert d.core.state is WorkerState.DRAINING
    assert d.at(1.2, AttemptFinished(run, p.Cancelled(0, 21))) == [
        Report(p.Cancelled(INCARNATION, 21)),
        Send(p.Goodbye(INCARNATION)),
        Exit(ExitCode.DONE, "drained"),
    ]


def test_drain_waits_for_a_running_map_to_finish_then_leaves():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    run = d.run(0.5, assign_map(11))
    assert d.at(0.9, DrainAsked(gathering=False)) == [Send(p.Draining(INCARNATION))]
    seen = d.ticks_until(25.0)
    assert [i for _, instructions in seen for i in notable(instructions)] == []  # still heartbeating, waiting
    assert heartbeats(seen[-1][1])
    assert d.at(25.5, AttemptFinished(run, done(11))) == [
        Report(dataclasses.replace(done(11), worker=INCARNATION)),
        Send(p.Goodbye(INCARNATION)),
        Exit(ExitCode.DONE, "drained"),
    ]


def test_drain_cancels_a_map_still_running_at_the_drain_timeout():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    run = d.run(0.5, assign_map(11))
    d.at(1.0, DrainAsked(gathering=False))
    d.ticks_until(30.9)
    assert d.core.next_deadline() == 31.0
    assert notable(d.at(31.0)) == [CancelAttempt(run)]
    assert d.at(31.5, AttemptFinished(run, p.Cancelled(0, 11)))[0] == Report(p.Cancelled(INCARNATION, 11))
    assert d.core.state is WorkerState.STOPPED


def test_drain_leaves_when_the_cancelled_map_never_returns():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    d.run(0.5, assign_map(11))
    d.at(1.0, DrainAsked(gathering=False))
    d.at(31.0)
    assert notable(d.at(40.9)) == []
    # Stuck past the grace: the worker leaves (exit 0, the coordinator told), it does not restart.
    assert notable(d.at(41.0)) == [Send(p.Goodbye(INCARNATION)), Exit(ExitCode.DONE, "drained")]


def test_an_assignment_arriving_while_draining_is_handed_back_not_run():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    run = d.run(0.5, assign_map(11))
    d.at(1.0, DrainAsked(gathering=False))
    assert d.message(1.1, assign_map(12, task=1)) == [Send(p.Cancelled(INCARNATION, 12))]
    assert d.core.current_run == run  # the running map goes on


def test_losing_the_registration_while_draining_leaves_without_registering_again():
    d = Driver(PATIENT)
    d.welcomed(0.0)
    d.run(0.5, assign_map(11))
    d.at(1.0, DrainAsked(gathering=False))
    assert d.message(2.0, p.Unknown("restarted", INCARNATION)) == [Exit(ExitCode.DONE, "drained")]


def test_status_lines_go_at_most_once_a_second_cut_to_the_limit():
    sent, now = [], [0.0]
    reports = StatusReports(sent.append, every=1.0, clock=lambda: now[0])
    reports("first")
    now[0] = 0.5
    reports("too soon: dropped")
    now[0] = 1.0
    reports("y" * 500)
    assert sent == ["first", "y" * p.MAX_STATUS]


def test_a_worker_that_stays_waits_for_its_first_job_however_long_then_gives_up_as_any():
    d = Driver(dataclasses.replace(SETTINGS, stay=True))
    d.at(0.0, Started())
    waiting = d.ticks_until(1000.0)  # no coordinator for far longer than the timeout
    assert not any(isinstance(i, Exit) for _, instructions in waiting for i in instructions)
    tries = [now for now, instructions in waiting if Connect() in instructions]
    assert len(tries) > 100 and max(b - a for a, b in zip(tries, tries[1:])) <= SETTINGS.heartbeat_interval
    assert d.message(1000.0, welcome()) == [JoinJob(welcome())]  # the next coordinator came
    exits = [i for _, instructions in d.ticks_until(1100.0) for i in instructions if isinstance(i, Exit)]
    assert [e.code for e in exits] == [ExitCode.COORDINATOR_LOST]  # its job's coordinator went silent


def test_a_reduce_output_finished_after_the_loop_stopped_is_removed_at_exit(tmp_path):
    """A backup cancelled as the job ended may finish its file after the control loop stopped:
    its TaskDone was never sent (so never committed), and its temporary file must not stay."""
    import queue

    from mapreduce.job import load_app
    from mapreduce.output import attempt_temp_name
    from mapreduce.worker.loop import Worker
    from mapreduce.worker.tasks import JobContext

    out, workdir = tmp_path / "out", tmp_path / "scratch" / "job-j" / "w-1"
    out.mkdir()
    workdir.mkdir(parents=True)
    sent, unsent = out / attempt_temp_name(0, "j", 7), out / attempt_temp_name(1, "j", 8)
    kept = out / "part-00000"
    for path in (sent, unsent, kept):
        path.write_text("x\n")
    worker = Worker.__new__(Worker)  # only the exit's clean-up is under test: no sockets
    worker.job = JobContext(load_app("wordcount"), "j", 1, 2, "host", workdir, out, True, "")
    worker._temps = {sent}
    worker._results = queue.Queue()
    worker._results.put((3, p.TaskDone(0, 8, [], unsent.name, 1), True))
    worker._results.put((4, p.Cancelled(0, 9), True))
    worker._remove_temps()
    assert sorted(path.name for path in out.iterdir()) == ["part-00000"]


def test_a_registration_not_welcomed_soon_after_a_handshake_is_sent_again_once():
    d = Driver()
    assert d.at(0.0, Started()) == [Connect(), Send(REGISTER)]
    assert d.at(0.1, HandshakeSucceeded()) == []  # the queued registration goes out on this connection
    assert abs(d.core.next_deadline() - 0.3) < 1e-9  # (0.1 + 0.2)
    # That peer closed without a word (a coordinator ending): the registration is sent again.
    assert d.at(0.31) == [Send(REGISTER)]
    assert d.at(0.6) == []  # once per handshake
    assert d.at(0.7, HandshakeSucceeded()) == []
    d.message(0.75, welcome())
    assert Send(REGISTER) not in d.at(1.0)  # welcomed: nothing more to send again


def test_a_connection_ended_mid_handshake_fails_only_if_none_succeeds_within_the_timeout():
    d = Driver(PATIENT)
    d.at(0.0, Started())
    d.at(0.5, Connected())
    assert d.at(0.6, HandshakeFailed("the handshake failed", definite=False)) == []
    d.at(0.7, Connected())
    d.at(0.8, HandshakeSucceeded())  # another connection made it: nothing failed
    d.message(0.9, welcome())
    assert notable(d.at(6.0)) == []
    d.at(7.0, Connected())
    d.at(7.1, HandshakeFailed("the handshake failed (is the coordinator's public key the right one?)", False))
    (exit_,) = notable(d.at(12.0))
    assert exit_.code is ExitCode.REFUSED and "public key the right one" in exit_.why


# ---- a restarted coordinator (epochs) --------------------------------------------


def test_a_restarted_coordinator_of_the_same_job_is_rejoined_and_an_older_one_ignored():
    d = Driver(PATIENT)
    d.welcomed()
    d.message(1.0, p.Unknown("restarted", INCARNATION))
    newer = dataclasses.replace(welcome(worker=1_000_001), epoch=2)
    assert d.message(1.1, newer) == [JoinJob(newer, again=True)]  # folder kept, new data server taken (nothing held)
    assert d.core.incarnation == 1_000_001
    d.message(1.2, p.Unknown("lost", 1_000_001))
    older = dataclasses.replace(welcome(worker=5), epoch=1)
    assert d.message(1.3, older) == []  # a superseded coordinator: not registered with it
    assert d.core.state is WorkerState.REGISTERING and d.core.incarnation is None
    assert d.message(1.4, p.AssignMap(12, 0, "in.txt", "/data/in.txt", 0, 100)) == []  # and no work from it


def test_registering_again_tells_the_outputs_this_worker_holds_even_one_finished_meanwhile():
    d = Driver(PATIENT)
    d.welcomed()
    first = d.run(1.0, assign_map(attempt=11, task=3))
    d.at(2.0, AttemptFinished(first, done(11)))
    reduce_run = d.run(3.0, assign_reduce(attempt=21))
    d.at(4.0, AttemptFinished(reduce_run, p.TaskDone(0, 21, [], ".part-00000.tmp", 2)))  # committed: not held
    second = d.run(5.0, assign_map(attempt=12, task=4))
    d.at(6.0, AttemptFinished(second, done(12)))  # reported to a coordinator that has just died
    held = [
        p.HeldOutput(0, 3, 11, "/scratch/map-output.log", [3, 4], 0, 7),
        p.HeldOutput(0, 4, 12, "/scratch/map-output.log", [3, 4], 0, 7),
    ]
    # Registering again, it tells whoever answers what it holds: a restarted coordinator takes it.
    assert d.message(7.0, p.Unknown("restarted", INCARNATION)) == [Send(dataclasses.replace(AGAIN, held=held))]
    newer = dataclasses.replace(welcome(worker=1_000_001), epoch=2)
    assert d.message(7.1, newer) == [JoinJob(newer, again=True)]
    assert d.message(7.2, welcome(worker=9, job_id="job2"))[0] == JoinJob(welcome(9, "job2"))
    assert d.core.held == []  # a new job: nothing of the old one counts
