"""The built-in apps; run one with ``mapreduce run NAME ...``."""
