"""The rules of Elastic's ecs-logging specification, and our own, for one log line.

``SPEC`` is ``spec/spec.json`` of ``elastic/ecs-logging`` (the file every official ECS logger
is tested against), reduced to what it asks of a line: which fields are required, which come
first and in what order, their types, which must be top-level dotted keys, and how
``event.dataset`` is sanitized. ``ECS_FIELDS`` are the ECS names we write, each looked up in
the ECS field reference (``elastic/ecs``, ``generated/csv/fields.csv``) with its type; every
other name must be ours, under ``tracking.``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from typing import Any

from process.logs import ACCESS_DATASET, APP_DATASET, ECS_VERSION

# From spec.json: "type", "required", "index" and "top_level_field" of each field it names.
SPEC: dict[str, dict[str, Any]] = {
    "@timestamp": {"type": "datetime", "required": True, "index": 0},
    "log.level": {"type": "string", "required": True, "index": 1, "top_level_field": True},
    # The spec makes message optional (some structured loggers have none); we always write one,
    # and DESIGN.md promises it on every line, so our rule is stricter.
    "message": {"type": "string", "required": True, "index": 2},
    "ecs.version": {"type": "string", "required": True},
    "labels": {"type": "object", "required": False},
    "trace.id": {"type": "string", "required": False},
    "transaction.id": {"type": "string", "required": False},
    "service.name": {"type": "string", "required": False},
    "service.node.name": {"type": "string", "required": False},
    "event.dataset": {"type": "string", "required": False},
    "data_stream.dataset": {"type": "string", "required": False},
    "data_stream.namespace": {"type": "string", "required": False},
    "process.thread.name": {"type": "string", "required": False},
    "log.logger": {"type": "string", "required": False},
    "log.origin.file.line": {"type": "integer", "required": False},
    "log.origin.file.name": {"type": "string", "required": False},
    "log.origin.function": {"type": "string", "required": False},
    "error.type": {"type": "string", "required": False},
    "error.message": {"type": "string", "required": False},
    "error.stack_trace": {"type": "string", "required": False},
}
# spec.json's sanitization of event.dataset's value: these become "_", lower case, 100 chars.
DATASET_FORBIDDEN = set('\\/*?"<>| ,#:-')
DATASET_MAX_CHARS = 100

# ECS field reference (8.12.0-dev tree, just after 8.11.0): every ECS name we write, and its
# ECS type (keyword, wildcard, match_only_text → str; long → int).
ECS_FIELDS: dict[str, str] = {
    "@timestamp": "date",
    "log.level": "keyword",
    "log.logger": "keyword",
    "message": "match_only_text",
    "ecs.version": "keyword",
    "event.dataset": "keyword",
    "event.duration": "long",
    "service.name": "keyword",
    "process.pid": "long",
    "process.exit_code": "long",
    "http.request.id": "keyword",
    "http.request.method": "keyword",
    "http.response.status_code": "long",
    "url.path": "wildcard",
    "error.type": "keyword",
    "error.message": "match_only_text",
    "error.stack_trace": "wildcard",
}
OURS = "tracking."
DATASETS = {APP_DATASET, ACCESS_DATASET}


def _has_type(value: Any, kind: str) -> bool:
    match kind:
        case "string" | "keyword" | "wildcard" | "match_only_text":
            return isinstance(value, str)
        case "integer" | "long":
            return isinstance(value, int) and not isinstance(value, bool)
        case "object":
            return isinstance(value, dict)
        case "datetime" | "date":
            return isinstance(value, str) and _is_iso_8601_with_zone(value)
    raise AssertionError(f"no rule for type {kind}")


def _is_iso_8601_with_zone(text: str) -> bool:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return False
    return "T" in text and moment.tzinfo is not None


def violations(raw: str) -> list[str]:
    """Every rule that one line of output breaks (none: it conforms)."""
    try:
        line = json.loads(raw)
    except ValueError:
        return ["not JSON"]
    if not isinstance(line, dict):
        return ["not a JSON object"]
    found = []
    keys = list(line)
    for name, rule in SPEC.items():
        if name not in line:
            if rule["required"]:
                found.append(f"{name} is missing")
            continue
        if not _has_type(line[name], rule["type"]):
            found.append(f"{name} is not a {rule['type']}: {line[name]!r}")
        if "index" in rule and keys.index(name) != rule["index"]:
            found.append(f"{name} is at position {keys.index(name)}, not {rule['index']}")
    for name in (n for n, rule in SPEC.items() if rule.get("top_level_field")):
        if name.split(".")[0] in line:
            found.append(f"{name} is nested, not a top-level dotted key")
    for name, value in line.items():
        if name.startswith(OURS):
            continue
        if name not in ECS_FIELDS:
            found.append(f"{name} is neither an ECS field we checked nor under {OURS}")
        elif not _has_type(value, ECS_FIELDS[name]):
            found.append(f"{name} is not an ECS {ECS_FIELDS[name]}: {value!r}")
    if line.get("ecs.version") != ECS_VERSION:
        found.append(f"ecs.version is {line.get('ecs.version')!r}, not {ECS_VERSION}")
    dataset = line.get("event.dataset")
    if dataset not in DATASETS:
        found.append(f"event.dataset is {dataset!r}, not one of {sorted(DATASETS)}")
    elif (
        set(dataset) & DATASET_FORBIDDEN
        or dataset != dataset.lower()
        or len(dataset) > DATASET_MAX_CHARS
    ):
        found.append(f"event.dataset {dataset!r} is not sanitized as the spec asks")
    return found


def nonconforming(raw_lines: Iterable[str]) -> list[str]:
    """Each line that breaks a rule, with the rules it breaks; and any name that is a field
    on one line and the parent of fields on another (Elasticsearch cannot map both)."""
    found = []
    names: set[str] = set()
    for raw in raw_lines:
        broken = violations(raw)
        if broken:
            found.append(f"{raw}\n  -> {'; '.join(broken)}")
        else:
            names.update(json.loads(raw))
    for name in names:
        parents = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
        for parent in parents & names:
            found.append(f"{parent} is a field and also the parent of {name}")
    return found
