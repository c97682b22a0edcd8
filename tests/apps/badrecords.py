"""Word count over lines that raises on bad records: a map on any line holding POISON, a
reduce on the key "venom". With --skip-bad-records both are skipped and reported."""

input_format = "lines"


def map(position, line):
    if "POISON" in line:
        raise ValueError(f"poisoned line at {position.offset}")
    for word in line.split():
        yield word, 1


def reduce(word, counts):
    if word == "venom":
        raise ValueError("venomous key")
    return sum(counts)
