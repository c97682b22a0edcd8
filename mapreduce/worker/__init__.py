"""The worker: its control loop, and the task bodies that run user code."""
