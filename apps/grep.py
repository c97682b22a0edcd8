"""Lines matching a regular expression: ``--param pattern=REGEX``. A map-only app (no
reduce): each input file's matches, in order, are one part file of lines
``path:line-number<TAB>line`` (numbers count from 1)."""

import re

# Line numbers count from the start of the file, so each file is one map task.
whole_files = True

_pattern = None


def init(params):
    global _pattern
    unknown = set(params) - {"pattern"}
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; grep takes pattern=REGEX")
    if "pattern" not in params:
        raise ValueError("grep needs --param pattern=REGEX")
    _pattern = re.compile(params["pattern"])


def map(path, text):
    search = _pattern.search
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the text ends with a newline: no line after it
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if search(line):
            yield f"{path}:{number}", line
