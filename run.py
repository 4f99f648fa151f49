#!/usr/bin/env python3
"""The only entry point: ``python run.py --help``.

It parses the configuration, runs an operator's one-shot command (``--init-store``,
``--raise-reserved-to``, ``--erase-customer``) or else starts the service: it checks the ledger
against the store, takes the listening socket, and hands over to the supervisor
(``supervisor/``), which starts and watches the allocator, the ledger's writer and the workers.
Signal handlers only queue the signal for the supervisor's main loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import sys

from config import settings
from config.settings import Config, ConfigError
from process import logs
from service.admin import with_admin_token
from supervisor import Supervisor
from supervisor.child import HANDLED_SIGNALS
from supervisor.listener import take_listener
from supervisor.targets import preload

log = logging.getLogger("supervisor")


def _log_configuration(config: Config) -> None:
    """The settings in force, at start. Secrets are reported as set or not, never shown."""
    shown = {f"tracking.config.{name}": value for name, value in settings.describe(config).items()}
    log.info("configuration", extra=shown)


def _ledger_below_mark(config: Config) -> bool:
    """Whether the ledger claims no counter the store would issue again (after a restore);
    checked before the allocator starts, and logged when not."""
    from allocator.errors import AllocatorError
    from ledger.commands import check_below_mark
    from ledger.errors import LedgerAhead

    try:
        check_below_mark(config)
    except LedgerAhead as exc:
        log.error("the ledger is ahead of the store: not starting", extra=logs.error_fields(exc))
        return False
    except (AllocatorError, OSError, sqlite3.Error) as exc:
        # Not started unchecked: the allocator could not open this store either.
        log.error("cannot check the ledger against the store", extra=logs.error_fields(exc))
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    try:
        config, commands = settings.parse(argv)
    except ConfigError as exc:
        # JSON on stdout like every other line, so that log pipelines and Filebeat read it. The
        # configured level is part of what failed; an error shows at any level.
        logs.configure("INFO")
        log.error("invalid configuration", extra=logs.error_fields(exc))
        return 2
    logs.configure(config.log_level)
    if commands.erase_customer is not None:
        from ledger.commands import erase_customer

        return erase_customer(config, commands.erase_customer)
    if commands.given:
        from allocator.commands import run_commands

        return asyncio.run(run_commands(config, commands))
    _log_configuration(config)
    preload()
    if not _ledger_below_mark(config):
        return 1
    try:
        config, made_token = with_admin_token(config)
    except OSError as exc:
        log.error("cannot make an admin token", extra=logs.error_fields(exc))
        return 1
    if made_token:
        # The path, never the token: the file is the operator's to read (mode 0600).
        log.warning(
            "no admin_token is configured: made one for the ledger's records and remote operators",
            extra={"tracking.admin_token_file": made_token},
        )
    try:
        listener = take_listener(config)
    except OSError as exc:
        log.error(
            "cannot listen",
            extra={
                "tracking.host": config.host,
                "tracking.port": config.port,
                **logs.error_fields(exc),
            },
        )
        return 1
    supervisor = Supervisor(
        config, listener, load_config=lambda: with_admin_token(settings.load(argv))[0]
    )
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, lambda signum, _: supervisor.push(signum))
    try:
        return supervisor.run()
    finally:
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
