"""The worker: its decisions (core.py, pure), the process that carries them out (loop.py),
and the task bodies that run user code (tasks.py)."""
