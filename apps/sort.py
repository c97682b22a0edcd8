"""Sort lines: part files concatenated in order are exactly ``LC_ALL=C sort`` of every input
line (byte order for UTF-8 text, duplicates kept, each line ending in a newline, written as
it is). A total-order job: reduces get key ranges cut from a sample of the input."""

from mapreduce import Record

input_format = "lines"  # map gets each line (and its position)
total_order = True  # partitions are key ranges: part-00000 holds the smallest lines


def map(position, line):
    yield Record(line)  # the line is the key; no value


def reduce(line, values):
    for _ in values:  # one per copy of the line: duplicates are kept
        yield Record(line)
