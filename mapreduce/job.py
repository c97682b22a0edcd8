"""The app contract: loading an app and checking it has what a job needs.

An app is a module with ``map(key, value)`` yielding ``(key, value)`` pairs and, unless it
is map-only, ``reduce(key, values)``; optionally ``combine(key, values)`` (same shape as
reduce, run map-side), ``partition(key, n)`` and ``init(params)`` (called once per process, before
any task, with the ``--param`` values). A module constant ``whole_files = True`` asks for
each input file to reach map whole, never split (for apps that number lines, say).

What a reduce (or combine) emits for a key (:func:`emitted`):
- a value: one record ``key<TAB>value``; ``None``: no record;
- a generator: one record per value it yields, in order;
- a :class:`Record` (returned or yielded): a record under a key of its own
  (Hadoop's ``context.write(k, v)``), or with no value a line with no tab.
A map may yield a ``Record`` too; a combine must keep its key.

Opt-in powers, checked when the app is loaded:
- ``n_reduce = K``: the app needs exactly K reduce tasks (a global ranking needs one): the
  default of --reduce, and any other value is refused.
- ``total_order = True``: partition by key ranges cut from a sample of the map's keys, so
  that part files concatenated in order are globally sorted (mapreduce.sampling).
- ``sort_values = True``: each key's values reach reduce sorted (Hadoop's secondary sort,
  mrjob's SORT_VALUES), by the same streaming merge as the keys: bounded in memory.
- ``input_format = "lines"``: map is called once per line, ``map(Position(path, offset),
  line)``, instead of once per split with its whole text (``"text"``, the default), or
  ``"bytes"``: once per split with its bytes, undecoded (a compressed file's decompressed).
- ``map_setup()`` / ``map_teardown()`` and ``reduce_setup()`` / ``reduce_teardown()`` run once
  per task, around its calls; a teardown may return or yield records (pairs or Records) to
  emit, e.g. the totals of in-mapper combining across a whole split.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import contextvars
import dataclasses
import enum
import importlib
import importlib.util
import inspect
import sys
import types
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import cloudpickle

from mapreduce import counters
from mapreduce.errors import AppError

BUILTIN_PACKAGE = "mapreduce.apps"

MapFn = Callable[[str, Any], Iterable[tuple[str, Any]]]
ReduceFn = Callable[[str, Iterator[Any]], Any]
PartitionFn = Callable[[str, int], int]


class InputFormat(enum.Enum):
    TEXT = "text"  # map(path, text of the split): one call per split
    LINES = "lines"  # map(Position(path, offset), line): one call per line
    BYTES = "bytes"  # map(path, bytes of the split, decompressed): one call per split, undecoded


def _counted_groups(groups: Iterable[tuple[str, Iterator]]) -> Iterator[tuple[str, Iterator]]:
    """The groups, counted into the running task's counters. (Their records are counted
    where they are read: a reduce need not consume all its values.)"""
    n = 0
    try:
        for group in groups:
            n += 1
            yield group
    finally:
        counts = counters.current()
        if counts is not None:
            counts.builtin(counters.REDUCE_INPUT_GROUPS, n)


_BAD_RECORD = "mapreduce_bad_record"  # set on an exception that user code raised on one record


def bad_record(exc: BaseException) -> str:
    """The record an exception of user code was raised on ("" if unknown): a map's line
    offset (or its split's start, for a text input map), a reduce's key."""
    return getattr(exc, _BAD_RECORD, "") or ""


def _mark(exc: BaseException, record: str) -> None:
    if not getattr(exc, _BAD_RECORD, ""):
        try:
            setattr(exc, _BAD_RECORD, record)
        except (AttributeError, TypeError):
            pass  # an exception that takes no attributes: its record stays unknown


def _each(map_fn: MapFn, records: Iterable[tuple[Any, str]], skip: frozenset[str]) -> Iterator:
    for position, line in records:
        if skip and str(position.offset) in skip:
            continue
        try:
            out = map_fn(position, line)
            if out is not None:
                yield from out
        except Exception as exc:
            _mark(exc, str(position.offset))
            raise


def _marking(records: Iterable, record: str) -> Iterator:
    try:
        yield from records
    except Exception as exc:
        _mark(exc, record)
        raise


def _lazy(map_fn: MapFn, key: str, value: Any, record: str) -> Iterator:
    try:
        yield from map_fn(key, value) or ()
    except Exception as exc:
        _mark(exc, record)
        raise


def _around(setup: Callable | None, body: Iterable, teardown: Callable | None) -> Iterator:
    """``body``'s records between ``setup()`` and the records ``teardown()`` returns or yields."""
    if setup is not None:
        setup()
    yield from body
    if teardown is not None:
        yield from teardown() or ()


class _NoValue:
    """The value of a record that is only a key: written as a line with no tab."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __reduce__(self) -> str:
        return "NO_VALUE"  # pickled by reference: one instance everywhere


NO_VALUE = _NoValue()


@dataclass(frozen=True, slots=True)
class Record:
    """A record under a key of the task's choosing: ``yield Record(word, count)`` in a reduce
    writes ``word<TAB>count`` whatever key it was called with; ``Record(line)`` writes the
    line alone (no tab: Hadoop's null value)."""

    key: str
    value: Any = NO_VALUE


def emitted(key: str, result: Any) -> Iterator[tuple[str, Any]]:
    """The (key, value) records a reduce or combine call emitted for ``key`` (see the module)."""
    if result is None:
        return
    if isinstance(result, types.GeneratorType):
        for item in result:
            if isinstance(item, Record):
                yield _record_key(item), item.value
            else:
                yield key, item
    elif isinstance(result, Record):
        yield _record_key(result), result.value
    else:
        yield key, result


def shuffle_pair(item: Any, where: str) -> tuple[str, Any]:
    """A map's pair or Record as it enters the shuffle (a record with no value carries None)."""
    if isinstance(item, Record):
        return _record_key(item), None if item.value is NO_VALUE else item.value
    if not ((item.__class__ is tuple or item.__class__ is list) and len(item) == 2):
        raise AppError(f"map emitted {item!r} for {where}: expected a (key, value) pair or a Record")
    if type(item[0]) is not str:
        raise AppError(f"map emitted key {item[0]!r} ({type(item[0]).__name__}) for {where}: keys must be str")
    return item[0], item[1]


def output_records(items: Iterable[Any], where: str) -> Iterator[tuple[str, Any]]:
    """A map's (key, value) pairs and Records as output records (a map-only job's output)."""
    for item in items:
        if isinstance(item, Record):
            yield _record_key(item), item.value
        elif (item.__class__ is tuple or item.__class__ is list) and len(item) == 2 and type(item[0]) is str:
            yield item[0], item[1]
        else:
            raise AppError(f"map emitted {item!r} for {where}: expected a (key, value) pair with a str key or a Record")


def _record_key(record: Record) -> str:
    if type(record.key) is not str:
        raise AppError(f"{record!r}: a record's key must be a str, not {type(record.key).__name__}")
    return record.key


class Flag(Protocol):
    """What a task sees of its attempt's cancellation (a threading.Event, set by its worker)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class RunningTask:
    """The task the code runs in: its phase ("map" or "reduce"), its number, and the event set
    when its attempt is cancelled (None in one process: nothing cancels there)."""

    phase: str
    index: int
    cancelled: Flag | None = None
    report_status: Callable[[str], None] | None = None  # shows a status line for the attempt (the status page)


_TASK: contextvars.ContextVar[RunningTask | None] = contextvars.ContextVar("mapreduce_task", default=None)


@contextlib.contextmanager
def task_running(
    phase: str,
    index: int,
    cancelled: Flag | None = None,
    report_status: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Mark the code run inside as task ``index`` of ``phase`` (a streaming command's settings;
    ``cancelled`` lets it stop the command the moment the attempt is cancelled)."""
    token = _TASK.set(RunningTask(phase, index, cancelled, report_status))
    try:
        yield
    finally:
        _TASK.reset(token)


def running_task() -> RunningTask | None:
    """The task running this code, if any."""
    return _TASK.get()


def identity(key: str, values: Iterator[Any]) -> Iterator[Any]:
    """The identity reduce (Hadoop's default reducer): every record as the map emitted it,
    ``key<TAB>value``, or the key alone for a record with no value (a map's ``Record(key)``
    reaches the reduce side as None). Workers write its output in whole batches, with no
    call per key: a sort is its map's keys, merged."""
    for value in values:
        yield Record(key) if value is None else value


class TaskMap(abc.ABC):
    """A later pipeline step's map that takes every record of a task at once (a streaming
    mapper: one process a task) and emits pairs or Records from ``run(records)``."""

    @abc.abstractmethod
    def run(self, records: Iterable[tuple[str, Any]]) -> Iterable[Any]:
        """Everything the task emits for the records (key, value) the step before emitted."""

    def __call__(self, key: str, value: Any) -> Any:
        raise AppError(f"{type(self).__name__} maps a task's records at once, not one record")


class TaskReduce(abc.ABC):
    """A reduce that takes every group of a task at once (a streaming reducer: one process a
    task) and emits records (pairs or Records) from ``run(groups)``."""

    @abc.abstractmethod
    def run(self, groups: Iterable[tuple[str, Iterator[Any]]]) -> Iterable[Any]:
        """Every record the task emits for its groups (key, values), in key order."""

    def __call__(self, key: str, values: Iterator[Any]) -> Any:
        raise AppError(f"{type(self).__name__} reduces a task's groups at once, not one key")


@dataclass(frozen=True)
class RangePartition:
    """partition(key, n) by ranges of keys: the index of the first cut point not below
    ``key`` (a key equal to a cut point goes to its partition). A map's output is then cut
    into partitions where its sorted keys cross the cut points, with no call per record."""

    cuts: tuple[str, ...]  # ascending; n - 1 of them

    def __call__(self, key: str, n: int) -> int:
        self.check(n)
        return bisect.bisect_left(self.cuts, key)

    def check(self, n: int) -> None:
        if n != len(self.cuts) + 1:
            raise AppError(f"a total order cut for {len(self.cuts) + 1} partitions was asked for {n}")


def stable_partition(key: str, n: int) -> int:
    """The default partitioner: crc32 is stable across processes and machines,
    unlike ``hash()`` of a str, which is salted per process."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % n


@dataclass(frozen=True)
class App:
    """A loaded app: the user's functions plus the parameters they run with."""

    name: str
    map: MapFn
    reduce: ReduceFn | None  # None: a map-only app
    combine: ReduceFn | None = None
    partition: PartitionFn = stable_partition
    init: Callable[[Mapping[str, str]], None] | None = None
    params: Mapping[str, str] | None = None
    whole_files: bool = False  # the app needs each input file in one map call
    input_format: InputFormat = InputFormat.TEXT
    total_order: bool = False  # partition by ranges of keys cut from a sample (mapreduce.sampling)
    sort_values: bool = False  # each key's values reach reduce sorted (a secondary sort)
    n_reduce: int | None = None  # the number of reduce tasks the app needs, if it needs one
    map_setup: Callable[[], None] | None = None
    map_teardown: Callable[[], Any] | None = None
    reduce_setup: Callable[[], None] | None = None
    reduce_teardown: Callable[[], Any] | None = None
    steps: tuple[App, ...] = ()  # a pipeline: every step (the first is this app's own functions)

    def step(self, index: int) -> App:
        """Step ``index`` (0-based) of a pipeline; an app that is not one is its own only step."""
        return self.steps[index] if self.steps else self

    def run_record_map(self, records: Iterable[tuple[str, Any]]) -> Iterator:
        """A later step's map over the records the step before emitted (a record with no
        value reaches it as None), between its hooks."""
        if isinstance(self.map, TaskMap):
            body: Iterable = self.map.run(records)
        else:
            body = (
                pair for key, value in records for pair in self.map(key, None if value is NO_VALUE else value) or ()
            )
        return _around(self.map_setup, body, self.map_teardown)

    def run_map(self, key: str, source: Any, split_start: int = 0, skip: frozenset[str] = frozenset()) -> Iterable:
        """Everything one map task emits: ``source`` is the split's text, or its
        (Position, line) records for a line input app (see inputs.line_records). Records
        in ``skip`` (bad records: line offsets, or the split's start for a text map) are
        not read; an exception of the map names its record (``bad_record``)."""
        whole = str(split_start)  # a text map's one record: its split
        if self.input_format is InputFormat.LINES:
            calls: Any = _each(self.map, source, skip)
        elif whole in skip:
            calls = ()
        elif self.map_setup is None and self.map_teardown is None:
            try:
                result = self.map(key, source)
            except Exception as exc:
                _mark(exc, whole)
                raise
            if isinstance(result, types.GeneratorType):
                return _marking(result, whole)
            return result or ()  # as it is: a dict's items() takes a fast path
        else:
            calls = _lazy(self.map, key, source, whole)
        return _around(self.map_setup, calls, self.map_teardown)

    def passes_records_through(self) -> bool:
        """The reduce is the identity with no hooks: its output is its input, as it comes."""
        return self.reduce is identity and self.reduce_setup is None and self.reduce_teardown is None

    def run_reduce(
        self, groups: Iterable[tuple[str, Iterator]], skip: frozenset[str] = frozenset()
    ) -> Iterator[tuple[str, Any]]:
        """Everything one reduce task emits for its groups (key, values), in key order; keys
        in ``skip`` (bad records) are not reduced, and an exception names its key."""
        if isinstance(self.reduce, TaskReduce):
            return output_records(self.reduce.run(_counted_groups(groups)), "reduce")
        body = self._reduced(_counted_groups(groups), skip)
        if self.reduce_setup is None and self.reduce_teardown is None:
            return body
        return output_records(_around(self.reduce_setup, body, self.reduce_teardown), "reduce_teardown")

    def _reduced(self, groups: Iterable[tuple[str, Iterator]], skip: frozenset[str]) -> Iterator[tuple[str, Any]]:
        reduce = self.reduce
        for key, values in groups:
            if skip and key in skip:
                continue
            try:
                yield from emitted(key, reduce(key, values))
            except Exception as exc:
                _mark(exc, key)
                raise

    def start(self) -> None:
        """Run the app's ``init`` hook; call once per process before any task."""
        if self.init is not None:
            self.init(dict(self.params or {}))

    def to_bytes(self) -> bytes:
        """Pickle the app by value so workers need not have it installed."""
        return cloudpickle.dumps(self)

    @staticmethod
    def from_bytes(blob: bytes) -> App:
        app = cloudpickle.loads(blob)
        if not isinstance(app, App):
            raise AppError("the job code received is not a mapreduce app")
        return app


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: an app module's ``steps = [Step(map=..., reduce=...), ...]``.
    The first step's map reads the input; each later step's map gets the records the step
    before emitted, ``map(key, value)``, on the workers (never through the output folder);
    only the last step's output is committed. ``n_reduce``: this step's number of reduce
    tasks (default: --reduce for the first step, 8 for the others)."""

    map: MapFn
    reduce: ReduceFn
    combine: ReduceFn | None = None
    partition: PartitionFn | None = None
    n_reduce: int | None = None
    sort_values: bool = False
    map_setup: Callable[[], None] | None = None
    map_teardown: Callable[[], Any] | None = None
    reduce_setup: Callable[[], None] | None = None
    reduce_teardown: Callable[[], Any] | None = None


def load_app(ref: str, params: Mapping[str, str] | None = None) -> App:
    """Load an app named by short name (``wordcount``), module (``pkg.job``) or
    path to a ``.py`` file, and check it follows the app contract."""
    module = _import_app_module(ref)
    names = ("map", "reduce", "combine", "partition", "init", *HOOKS)
    functions = {name: getattr(module, name, None) for name in names}
    steps = getattr(module, "steps", None)
    if steps is not None:
        return _load_pipeline(ref, module, steps, functions, params)
    if not callable(functions["map"]):
        raise AppError(f"app {ref!r} ({module.__name__}) defines no map(key, value) function")
    if getattr(module, "total_order", False) and functions["partition"] is not None:
        raise AppError(f"app {ref!r} asks for total_order and defines partition: the one excludes the other")
    _check_functions(ref, functions)
    return _finish_loading(ref, module, functions, params, steps=())


def _load_pipeline(ref: str, module: ModuleType, steps: Any, functions: dict, params: Mapping[str, str] | None) -> App:
    if not isinstance(steps, list | tuple) or not steps or not all(isinstance(s, Step) for s in steps):
        raise AppError(f"app {ref!r}: steps must be a list of mapreduce.Step, got {steps!r}")
    clash = [name for name in ("map", "reduce", "combine", "partition", *HOOKS) if functions[name] is not None]
    if clash:
        raise AppError(f"app {ref!r} defines steps and also {', '.join(clash)}: put them in its steps")
    if getattr(module, "n_reduce", None) is not None or getattr(module, "sort_values", False):
        raise AppError(f"app {ref!r}: a pipeline sets n_reduce and sort_values in its steps")
    apps = []
    for number, step in enumerate(steps, 1):
        where = f"{ref} (step {number})"
        step_functions = {name: getattr(step, name, None) for name in functions} | {"init": None}
        if not callable(step.map) or not callable(step.reduce):
            raise AppError(f"app {where}: every step needs a map and a reduce function")
        if getattr(module, "total_order", False) and number == 1 and step.partition is not None:
            raise AppError(f"app {where} asks for total_order and defines partition: the one excludes the other")
        _check_functions(where, step_functions)
        n_reduce = _check_n_reduce(where, step.n_reduce, step.reduce)
        apps.append(_app(where, step_functions, n_reduce=n_reduce, sort_values=bool(step.sort_values)))
    first = {name: getattr(steps[0], name, None) for name in functions} | {"init": functions["init"]}
    top = _finish_loading(ref, module, first, params, steps=tuple(apps))
    return dataclasses.replace(top, n_reduce=apps[0].n_reduce, sort_values=apps[0].sort_values)


def _check_functions(ref: str, functions: dict) -> None:
    if functions["reduce"] is None:
        for needs_reduce in ("combine", "reduce_setup", "reduce_teardown"):
            if functions[needs_reduce] is not None:
                raise AppError(f"app {ref!r} has a {needs_reduce} but no reduce: a map-only app has no reduce side")
    for optional in ("reduce", "combine", "partition", "init", *HOOKS):
        if functions[optional] is not None and not callable(functions[optional]):
            raise AppError(f"app {ref!r}: {optional} is defined but is not a function")
    for name, takes in (("map", "(key, value)"), ("reduce", "(key, values)"), ("combine", "(key, values)"),
                        ("partition", "(key, n)"), ("init", "(params)"), *((h, "()") for h in HOOKS)):  # fmt: skip
        if functions[name] is not None:
            _check_shape(ref, name, functions[name], takes)


def _app(name: str, functions: dict, **more: Any) -> App:
    return App(
        name=name,
        map=functions["map"],
        reduce=functions["reduce"],
        combine=functions["combine"],
        partition=_checked_partition(functions["partition"]) if functions["partition"] else stable_partition,
        **{hook: functions[hook] for hook in HOOKS},
        **more,
    )


def _finish_loading(
    ref: str, module: ModuleType, functions: dict, params: Mapping[str, str] | None, steps: tuple[App, ...]
) -> App:
    if functions["init"] is None and params:
        raise AppError(f"app {ref!r} takes no parameters (it defines no init(params)), got {sorted(params)}")
    # Ship the module's code by value: a worker may not have the app installed.
    if module.__name__ not in ("__main__",) and not module.__name__.startswith("mapreduce."):
        cloudpickle.register_pickle_by_value(module)
    app = _app(
        ref,
        functions,
        init=functions["init"],
        params=dict(params or {}),
        whole_files=bool(getattr(module, "whole_files", False)),
        input_format=_input_format(ref, module),
        total_order=bool(getattr(module, "total_order", False)),
        sort_values=bool(getattr(module, "sort_values", False)),
        n_reduce=None if steps else _n_reduce(ref, module, functions["reduce"]),
        steps=steps,
    )
    try:
        app.start()
    except Exception as exc:
        raise AppError(f"app {ref!r} rejected its parameters: {type(exc).__name__}: {exc}") from exc
    return app


HOOKS = ("map_setup", "map_teardown", "reduce_setup", "reduce_teardown")


def _n_reduce(ref: str, module: ModuleType, reduce: Callable | None) -> int | None:
    return _check_n_reduce(ref, getattr(module, "n_reduce", None), reduce)


def _check_n_reduce(ref: str, value: Any, reduce: Callable | None) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1 or reduce is None:
        raise AppError(f"app {ref!r}: n_reduce = {value!r}: it must be a whole number of at least 1, with a reduce")
    return value


def _input_format(ref: str, module: ModuleType) -> InputFormat:
    value = getattr(module, "input_format", InputFormat.TEXT.value)
    try:
        return InputFormat(value)
    except ValueError:
        known = ", ".join(repr(f.value) for f in InputFormat)
        raise AppError(f"app {ref!r}: input_format = {value!r} is not one of {known}") from None


def _check_shape(ref: str, name: str, function: Callable, takes: str) -> None:
    """Refuse, at load time, a function that cannot be called the way the framework calls it."""
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise AppError(f"app {ref!r}: {name} is async; it must be a plain function {name}{takes}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to check
    try:
        signature.bind(*[None] * (takes.count(",") + 1 if takes != "()" else 0))
    except TypeError:
        raise AppError(f"app {ref!r}: {name}{signature} cannot be called as {name}{takes}") from None


def _checked_partition(partition: PartitionFn) -> PartitionFn:
    def checked(key: str, n: int) -> int:
        index = partition(key, n)
        if type(index) is not int or not 0 <= index < n:
            raise AppError(f"partition({key!r}, {n}) returned {index!r}: expected an int in [0, {n})")
        return index

    return checked


def _import_app_module(ref: str) -> ModuleType:
    if ref.endswith(".py") or "/" in ref:
        return _import_path(Path(ref))
    candidates = [ref]
    if "." not in ref:
        candidates.insert(0, f"{BUILTIN_PACKAGE}.{ref}")
    elif ref.startswith("apps."):
        candidates.append(f"{BUILTIN_PACKAGE}.{ref[len('apps.') :]}")
    for name in candidates:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only "this module does not exist" means try the next name; an app that
            # fails to import one of its own dependencies is a broken app.
            if (
                exc.name is not None
                and name.startswith(exc.name)
                and (exc.name == name or name.startswith(exc.name + "."))
            ):
                continue
            raise AppError(f"app {ref!r} failed to import: {exc}") from exc
        except Exception as exc:
            raise AppError(f"app {ref!r} failed to import: {type(exc).__name__}: {exc}") from exc
    raise AppError(
        f"unknown app {ref!r}: not a built-in ({', '.join(builtin_apps())}), an importable module or a .py file"
    )


def _import_path(path: Path) -> ModuleType:
    if not path.is_file():
        raise AppError(f"app file {str(path)!r} does not exist")
    name = "mapreduce_app_" + path.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppError(f"app file {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise AppError(f"app file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def builtin_apps() -> list[str]:
    package = importlib.import_module(BUILTIN_PACKAGE)
    folder = Path(package.__file__).parent
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
