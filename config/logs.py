"""JSON logs on stdout, one object per line, with Elastic Common Schema field names."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

SERVICE_NAME = "tracking-numbers"


class EcsFormatter(JsonFormatter):
    """python-json-logger's formatter with ECS names for the standard record fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s %(process)d",
            rename_fields={
                "levelname": "log.level",
                "name": "log.logger",
                "process": "process.pid",
                "exc_info": "error.stack_trace",
            },
            static_fields={"service.name": SERVICE_NAME},
            timestamp="@timestamp",
            json_ensure_ascii=False,
        )

    def add_fields(self, log_data, record, message_dict) -> None:  # type: ignore[no-untyped-def]
        super().add_fields(log_data, record, message_dict)
        log_data["log.level"] = record.levelname.lower()
        if record.exc_info and record.exc_info[0] is not None:
            log_data["error.type"] = record.exc_info[0].__name__
            log_data["error.message"] = str(record.exc_info[1])


def configure(level: str) -> None:
    """Send every logger's records to stdout as ECS JSON, at ``level`` and above."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(EcsFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
