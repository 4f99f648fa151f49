"""What a PromQL expression reads: its metric names and the label names it matches or groups
by. Enough of PromQL's lexical rules for the alerts and the dashboard; the server itself judges
whether an expression is valid."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE,
)
# Words that are neither metrics nor functions: operators and modifiers.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "atan2", "inf", "nan"}  # fmt: skip
# Modifiers whose parenthesised list holds label names.
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


@dataclass
class Reads:
    """The series an expression reads: metric name → label names its selectors match on,
    and the label names it groups or joins by."""

    selectors: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def reads(expr: str) -> Reads:
    tokens = [
        (m.lastgroup, m.group())
        for m in TOKEN.finditer(expr)
        if m.lastgroup not in ("space", "string")
    ]
    found = Reads()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind != "name":
            i += 1
        elif text.lower() in GROUPING and following == "(":
            i += 2
            while i < len(tokens) and tokens[i][1] != ")":
                if tokens[i][0] == "name":
                    found.grouping.add(tokens[i][1])
                i += 1
        elif text.lower() in KEYWORDS or following == "(" or following.lower() in GROUPING:
            # a keyword, a function, or an aggregation with its grouping first (`sum by (x) (…)`)
            i += 1
        else:
            labels = found.selectors.setdefault(text, set())
            i += 1
            if following == "{":
                while i < len(tokens) and tokens[i][1] != "}":
                    if tokens[i][0] == "name":
                        labels.add(tokens[i][1])
                    i += 1
    return found
