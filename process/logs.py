"""JSON logs on stdout, one object per line, as Elastic's ecs-logging specification asks.

The spec (``spec/spec.json`` in ``elastic/ecs-logging``) wants ``@timestamp``, ``log.level`` and
``message`` first, in that order, and ``ecs.version`` on every line. Every other name is an
Elastic Common Schema field, or ours under ``tracking.*`` where ECS has none, so that a later
ECS release cannot give one of our names another meaning. The access log writes the same
shape on its own, faster (service/access_log.py).
"""

from __future__ import annotations

import logging
import sys
import time

from pythonjsonlogger.json import JsonFormatter

SERVICE_NAME = "tracking-numbers"
# Every ECS name we write was checked against ECS's field reference (elastic/ecs,
# generated/csv/fields.csv) as of the tree right after the 8.11.0 release (8.12.0-dev): this
# names that last release. docs/operations.md lists the names.
ECS_VERSION = "8.11.0"
# ecs-logging's recommended event.dataset is ``${service.name}.${appender}``, sanitized
# (lower case, ``-`` becomes ``_``): one dataset per stream, so Kibana tells them apart.
APP_DATASET = SERVICE_NAME.replace("-", "_") + ".log"
ACCESS_DATASET = SERVICE_NAME.replace("-", "_") + ".access"


def ecs_timestamp(millisecond: int) -> str:
    """A Unix time in milliseconds as ECS's ``@timestamp``: ISO 8601, UTC, with its zone."""
    second, fraction = divmod(millisecond, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{fraction:03d}Z"


def error_fields(exc: BaseException) -> dict[str, str]:
    """ECS's fields for an error a log line reports: ``extra=error_fields(exc)``."""
    return {"error.type": type(exc).__name__, "error.message": str(exc)}


class EcsFormatter(JsonFormatter):
    """python-json-logger's formatter, writing ecs-logging lines."""

    def __init__(self) -> None:
        super().__init__(
            "%(message)s %(name)s %(process)d",
            rename_fields={
                "name": "log.logger",
                "process": "process.pid",
                "exc_info": "error.stack_trace",
                # ECS has no field for a stack that is not an error's (logging's stack_info).
                "stack_info": "tracking.stack_info",
            },
            static_fields={"service.name": SERVICE_NAME},
            json_ensure_ascii=False,
        )

    def add_fields(self, log_data, record, message_dict) -> None:  # type: ignore[no-untyped-def]
        # The spec's order: these three first, then ecs.version (as the access log). The base
        # class sets "message" again, which keeps its place in the dict.
        log_data["@timestamp"] = ecs_timestamp(int(record.created * 1000))
        log_data["log.level"] = record.levelname.lower()
        log_data["message"] = record.message
        log_data["ecs.version"] = ECS_VERSION
        log_data["event.dataset"] = APP_DATASET
        super().add_fields(log_data, record, message_dict)
        if record.exc_info and record.exc_info[1] is not None:
            log_data.update(error_fields(record.exc_info[1]))


def configure(level: str) -> None:
    """Send every logger's records to stdout as ECS JSON, at ``level`` and above."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(EcsFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python's warnings (a deprecation in a dependency) as log lines too, not plain text on
    # stderr that Filebeat could not decode.
    logging.captureWarnings(True)
