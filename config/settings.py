"""The typed configuration and how it is loaded.

Precedence, lowest first: built-in defaults < TOML file (``--config``, default
``config/tracking.toml``) < ``TRACKING_*`` environment variables < command-line flags.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec

from config.indicators import DEFAULT_S10_INDICATORS, allowed_indicators
from config.urls import SCHEMES, SQLITE_URL, check_ports, redact_url

DEFAULT_CONFIG_FILE = "config/tracking.toml"
DEFAULT_STATE_DIR = "state"
ENV_PREFIX = "TRACKING_"
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(Exception):
    """The configuration cannot be used; the message says why and where."""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every setting of the service, resolved: no field is left to be derived later."""

    host: str = "127.0.0.1"
    port: Port = 8000
    workers: Positive = os.cpu_count() or 1
    state_dir: str = DEFAULT_STATE_DIR
    runtime_dir: str = ""
    store: str = ""
    reserve_step: Annotated[int, msgspec.Meta(ge=0)] = 0
    key_file: str = ""
    log_level: str = "INFO"
    access_log: bool = True
    # One durable record per issued number, written before the answer (ledger/). Off until
    # it meets the performance floor (docs/performance.md); the tests run it on.
    ledger: bool = False
    # 0 keeps every record: deleting the support desk's evidence is the operator's decision.
    ledger_retention_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    cors_origins: tuple[str, ...] = ()
    admin_token: str = ""
    lease_timeout: Seconds = 2.0
    ledger_timeout: Seconds = 2.0
    shutdown_timeout: Seconds = 10.0
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    idempotency_ttl: Seconds = 86400.0
    # At least one frame of the allocator's protocol (64 KiB): room for the largest answer.
    idempotency_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 16)] = 1 << 30
    # Slow clients (service/server/header_timeout.py, docs/reliability.md).
    header_timeout: Seconds = 10.0
    keepalive_timeout: Seconds = 75.0
    # Off, aiohttp's own runner, router and prepare serve (service/server/plain.py).
    aiohttp_shortcuts: bool = True
    # A child whose event loop shows no progress this long is killed and restarted (supervisor/).
    heartbeat_timeout: Annotated[float, msgspec.Meta(ge=1.0)] = 20.0
    # UPU S10 (config/indicators.py): checked at start, so a reserved indicator never starts.
    s10_indicators: tuple[str, ...] = DEFAULT_S10_INDICATORS
    # A new series' order; a series keeps the order stored with it (docs/operations.md).
    s10_order: Literal["permuted", "sequential"] = "permuted"
    # For tests only: the size a new S10 series is made with (UPU's is 10**8; see HELP).
    s10_series_size: Annotated[int, msgspec.Meta(ge=1, le=10**8)] = 10**8

    @property
    def allocator_socket(self) -> str:
        return os.path.join(self.runtime_dir, "allocator.sock")

    @property
    def ledger_socket(self) -> str:
        return os.path.join(self.runtime_dir, "ledger.sock")

    @property
    def ledger_path(self) -> str:
        """The ledger's SQLite file: beside the store's, never in it (docs/architecture.md)."""
        return os.path.join(self.state_dir, "ledger.sqlite3")


# One line per setting: the --help text, the README's table and the TOML file's comments say
# the same thing.
HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port to listen on",
    "workers": "number of HTTP worker processes (default: the CPU count)",
    "state_dir": "directory for durable state ($STATE_DIRECTORY when set)",
    "runtime_dir": "directory for the allocator socket ($RUNTIME_DIRECTORY when set, "
    "else STATE_DIR/run)",
    "store": "where the counter lives: sqlite:///PATH (default STATE_DIR/tracking.sqlite3), or "
    "postgresql://USER@HOST/DB to share it between hosts (a Unix socket: "
    "postgresql:///DB?host=/DIR; the password from PGPASSWORD or a PGPASSFILE)",
    "reserve_step": "numbers reserved per store write; 0 sizes it from the issue rate, at least "
    "100000 with SQLite and 1000000 with PostgreSQL",
    "key_file": "file holding the permutation key as 64 hex digits, mode 0600, then a line "
    "scheme=N naming the permutation its numbers are made with (required to create a store; "
    "an existing store's is checked against it); by default the key is generated at the "
    "store's first use and kept in the store; with key_file set, the store is never created "
    "implicitly (see --init-store)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "access_log": "one log line per request",
    "ledger": "keep a durable record of every issued number (STATE_DIR/ledger.sqlite3), "
    "written before the answer (off by default for now); off, nothing records which numbers "
    "were issued to whom",
    "ledger_retention_days": "days the ledger keeps a record before deleting it, in small "
    "batches beside the commits; 0 (the default) keeps every record: records are the support "
    "desk's evidence of whose parcel a number is, and deleting them is the operator's decision",
    "cors_origins": "origins allowed by CORS, comma-separated (none by default)",
    "admin_token": "bearer token that opens the operator endpoints to non-loopback clients",
    "lease_timeout": "seconds a request may wait for the allocator when a worker has no numbers",
    "ledger_timeout": "seconds a request may wait for its numbers' records to be durable",
    "shutdown_timeout": "seconds workers get to drain before they are killed",
    "event_loop": "uvloop (fast) or asyncio (the standard library's, for comparison)",
    "idempotency_ttl": "seconds an Idempotency-Key keeps its answer (24 hours by default)",
    "idempotency_max_bytes": "bytes on disk that Idempotency-Keys and their answers may take in "
    "the store (1 GiB by default); past it a request with a new key gets a 503",
    "header_timeout": "seconds a client may take to send a request's line and headers, from "
    "connecting or from the first byte of a request; then the connection is closed",
    "keepalive_timeout": "seconds an idle keep-alive connection is kept open (longer than a "
    "load balancer's idle timeout)",
    "aiohttp_shortcuts": "serve through our shortcuts past aiohttp's internals (about a tenth of a "
    "request's cost); false serves on aiohttp's own runner, router and prepare, as documented, "
    "for debugging or while a new aiohttp's fingerprints are reviewed (no request-head "
    "deadline then, and aiohttp's own text answers to malformed request heads)",
    "s10_series_size": "FOR TESTS ONLY: the number of serials a new S10 series is made with, "
    "stored with it (UPU's 10**8, the default, is the only right value in production; a small "
    "one lets tests drive a series to exhaustion)",
    "heartbeat_timeout": "seconds a worker's or the allocator's event loop may show no progress "
    "before the supervisor kills and restarts it (at least 1; 20 by default)",
    "s10_indicators": "UPU S10 service indicators issued with scheme=s10, comma-separated: RR, "
    "R* (a first letter) or QA-QM (a range); by default those for international use; domestic "
    "or bilateral ones (AV-AZ, B*, D*, GA, GD, N*, P*, Z*) only when listed; one that is "
    "reserved (J*, K*, S*, T*, W*) or not an indicator stops the start",
    "s10_order": "order of a new S10 series' serials: permuted (a keyed permutation, so a series "
    "cannot be enumerated from one number) or sequential (consecutive serials, for operators "
    "who hand out ranges); a series keeps the order it was created with",
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BOOLEANS = ("access_log", "ledger", "aiohttp_shortcuts")


def _field_names() -> tuple[str, ...]:
    return tuple(field.name for field in msgspec.structs.fields(Config))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Serve unique parcel tracking numbers over HTTP.",
        epilog=f"Every option can also be set in the TOML file or as {ENV_PREFIX}<OPTION> in "
        "the environment (for example TRACKING_PORT). Flags win over the environment, which "
        "wins over the file.",
    )
    parser.add_argument(
        "--config",
        help=f"TOML configuration file (default: {DEFAULT_CONFIG_FILE} when it exists)",
    )
    for name in _field_names():
        flag = "--" + name.replace("_", "-")
        if name in BOOLEANS:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=HELP[name])
        else:
            parser.add_argument(flag, dest=name, metavar=name.upper(), help=HELP[name])
    commands = parser.add_argument_group("one-shot commands (run, then exit)")
    commands.add_argument(
        "--init-store",
        action="store_true",
        help="create the store (with the key and scheme of key_file when set) and exit; with "
        "key_file set, the service never creates a store by itself",
    )
    commands.add_argument(
        "--erase-customer",
        metavar="CUSTOMER_ID",
        help="blank the customer's name and slug in every ledger record of that customer id, "
        "keeping numbers, countries, weights and times; also while the service runs",
    )
    commands.add_argument(
        "--raise-reserved-to",
        type=int,
        metavar="N",
        help="raise the store's reservation mark to N if it is lower (never lowers it): "
        "after restoring a backup, so that no number issued since the backup is issued again; "
        "refuses when there is no store (add --init-store to create one first)",
    )
    commands.add_argument(
        "--raise-series-reserved-to",
        type=series_mark,
        metavar="SERIES=N",
        help="raise the reservation mark of the S10 series SERIES (s10:RR:GB) to N if it is "
        "lower, never above its size: after restoring a backup, as --raise-reserved-to does for "
        "our own numbers; a series the backup does not hold is made, with s10_order",
    )
    return parser


class Commands(msgspec.Struct, frozen=True):
    """One-shot commands from the command line; they are not settings."""

    init_store: bool = False
    raise_reserved_to: int | None = None
    erase_customer: str | None = None
    # (series, mark): ``--raise-series-reserved-to s10:RR:GB=N``.
    raise_series_reserved_to: tuple[str, int] | None = None

    @property
    def given(self) -> bool:
        return (
            self.init_store
            or self.raise_reserved_to is not None
            or self.raise_series_reserved_to is not None
        )


def series_mark(text: str) -> tuple[str, int]:
    """``--raise-series-reserved-to``'s ``SERIES=N``: the series' name and the mark."""
    name, _, value = text.partition("=")
    if not (value.isascii() and value.isdigit()) or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not SERIES=N, such as s10:RR:GB=5000000")
    return name, int(value)


def _read_toml(path: str, explicit: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path!r} does not exist") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path!r}: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found = {}
    for name in _field_names():
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None:
            found[name] = value
    return found


def _resolve_paths(values: dict[str, Any], env: Mapping[str, str]) -> None:
    """Fill in the settings whose defaults depend on others or on systemd's environment."""
    # Checked before the Struct does it, because the path arithmetic below runs first: a
    # TOML `state_dir = 5` would be a TypeError, and `store = false` would silently be ignored.
    for name in ("state_dir", "runtime_dir", "store"):
        if name in values and not isinstance(values[name], str):
            raise ConfigError(
                f"invalid configuration: {name} must be a string, not {values[name]!r}"
            )
    if "state_dir" not in values and env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        values["state_dir"] = env["STATE_DIRECTORY"].split(":")[0]
    state_dir = os.path.abspath(values.get("state_dir", DEFAULT_STATE_DIR))
    values["state_dir"] = state_dir
    if not values.get("runtime_dir"):
        runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
        values["runtime_dir"] = runtime or os.path.join(state_dir, "run")
    values["runtime_dir"] = os.path.abspath(values["runtime_dir"])
    if not values.get("store"):
        values["store"] = SQLITE_URL + os.path.join(state_dir, "tracking.sqlite3")


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Turn the strings of flags and environment variables into the types TOML gives."""
    for name in ("cors_origins", "s10_indicators"):
        if isinstance(values.get(name), str):
            values[name] = [item.strip() for item in values[name].split(",") if item.strip()]
    for name in BOOLEANS:
        if isinstance(values.get(name), str):
            text = values[name].strip().lower()
            if text in ("1", "true", "yes", "on"):
                values[name] = True
            elif text in ("0", "false", "no", "off"):
                values[name] = False
    if isinstance(values.get("log_level"), str):
        values["log_level"] = values["log_level"].upper()
    return values


def _check(config: Config) -> Config:
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if not config.store.startswith(SCHEMES):
        raise ConfigError(f"store must be a URL that starts with {' or '.join(SCHEMES)}")
    try:
        check_ports(config.store)
    except ValueError as exc:
        # The message names the bad part, never the URL: it may hold a password.
        raise ConfigError(f"store is not a valid URL: {exc}") from None
    try:
        allowed_indicators(config.s10_indicators)
    except ValueError as exc:
        raise ConfigError(f"s10_indicators: {exc}") from None
    for socket_path in (config.allocator_socket, config.ledger_socket):
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"the socket path {socket_path!r} is longer than "
                f"{MAX_SOCKET_PATH} bytes; set runtime_dir to a shorter directory"
            )
    return config


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the Config from defaults, the TOML file, the environment and argv, in that order."""
    return parse(argv, env)[0]


def parse(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[Config, Commands]:
    """The Config (see ``load``) and the one-shot commands given on the command line."""
    env = os.environ if env is None else env
    args = vars(build_parser().parse_args(argv))
    commands = Commands(
        init_store=args.pop("init_store"),
        raise_reserved_to=args.pop("raise_reserved_to"),
        raise_series_reserved_to=args.pop("raise_series_reserved_to"),
        erase_customer=args.pop("erase_customer"),
    )
    if commands.erase_customer is not None and commands.given:
        raise ConfigError("--erase-customer runs alone, without the store's commands")
    config_file = args.pop("config") or env.get(ENV_PREFIX + "CONFIG")
    values = _read_toml(config_file or DEFAULT_CONFIG_FILE, explicit=bool(config_file))
    values.update(_from_env(env))
    values.update({k: v for k, v in args.items() if v is not None})
    _resolve_paths(values, env)
    try:
        config = msgspec.convert(_coerce(values), Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    return _check(config), commands


# What the allocator, the listening socket or the supervisor hold for the life of the service.
# A reload (SIGHUP) replaces the workers only, so these need a restart (docs/operations.md).
RESTART_ONLY = (
    "host",
    "port",
    "state_dir",
    "runtime_dir",
    "store",
    "reserve_step",
    "key_file",
    "ledger",  # its writer runs beside the allocator, started with the service
    "ledger_retention_days",  # the writer reads it at its start
    "event_loop",
    "idempotency_ttl",
    "idempotency_max_bytes",
    "s10_series_size",  # the allocator's, when it makes a series
    "heartbeat_timeout",  # the supervisor sets the children's beat interval from it at start
)


def changed(running: Config, loaded: Config) -> list[str]:
    """The names of the settings that differ between two configurations."""
    return [n for n in _field_names() if getattr(running, n) != getattr(loaded, n)]


def reloaded(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """What a reload applies: ``loaded``, but with every setting of RESTART_ONLY as it runs;
    and the names of those that ``loaded`` changes, which wait for a restart."""
    kept = [name for name in changed(running, loaded) if name in RESTART_ONLY]
    return msgspec.structs.replace(loaded, **{n: getattr(running, n) for n in kept}), kept


SECRETS = ("admin_token",)


def describe(config: Config) -> dict[str, Any]:
    """The settings as they may be logged: secrets only say whether they are set."""
    described = msgspec.structs.asdict(config)
    for name in SECRETS:
        described[name] = "(set)" if described[name] else "(not set)"
    # A PostgreSQL URL may carry a password.
    described["store"] = redact_url(config.store)
    return described
