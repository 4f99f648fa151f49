"""config.settings.load: the layers and their precedence, validation, and the derived paths."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from allocator.store import open_store
from config import settings, urls
from config.settings import Config, ConfigError
from config.urls import SCHEMES

REPO = Path(__file__).resolve().parents[1]
COMMITTED_TOML = REPO / "config" / "tracking.toml"
FIELDS = tuple(field.name for field in msgspec.structs.fields(Config))
DEFAULT_WORKERS = os.cpu_count() or 1
SOCKET_NAME = "/allocator.sock"


@pytest.fixture(autouse=True)
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative paths (the default config file, ``state``) resolve inside the test's directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_no_file(*argv: str, env: dict[str, str] | None = None) -> Config:
    """Load with no TOML file at all, so only defaults, ``env`` and ``argv`` count."""
    return settings.load(["--config", os.devnull, *argv], env={} if env is None else env)


# --- precedence -------------------------------------------------------------------------------

# (field, built-in default, file value as TOML, env value, flag value, expected per layer)
PRECEDENCE = [
    pytest.param("port", 8000, "8001", "8002", "8003", (8001, 8002, 8003), id="port"),
    pytest.param(
        "workers",
        DEFAULT_WORKERS,
        str(DEFAULT_WORKERS + 1),
        str(DEFAULT_WORKERS + 2),
        str(DEFAULT_WORKERS + 3),
        (DEFAULT_WORKERS + 1, DEFAULT_WORKERS + 2, DEFAULT_WORKERS + 3),
        id="workers",
    ),
    pytest.param(
        "log_level", "INFO", '"ERROR"', "WARNING", "DEBUG", ("ERROR", "WARNING", "DEBUG"), id="log"
    ),
]


@pytest.mark.parametrize(
    ("name", "default", "in_file", "in_env", "in_flag", "expected"), PRECEDENCE
)
def test_each_layer_overrides_the_one_below(
    tmp_path: Path,
    name: str,
    default: object,
    in_file: str,
    in_env: str,
    in_flag: str,
    expected: tuple[object, object, object],
) -> None:
    toml = write(tmp_path / "layer.toml", f"{name} = {in_file}\n")
    env = {"TRACKING_" + name.upper(): in_env}
    flag = ["--" + name.replace("_", "-"), in_flag]

    assert getattr(load_no_file(), name) == default
    assert getattr(settings.load(["--config", str(toml)], env={}), name) == expected[0]
    assert getattr(settings.load(["--config", str(toml)], env=env), name) == expected[1]
    assert getattr(settings.load(["--config", str(toml), *flag], env=env), name) == expected[2]


def test_flag_overrides_environment_without_a_file() -> None:
    assert load_no_file("--port", "9001", env={"TRACKING_PORT": "9000"}).port == 9001


def test_tracking_config_env_names_the_config_file(tmp_path: Path) -> None:
    toml = write(tmp_path / "from-env.toml", "port = 8111\n")

    assert settings.load([], env={"TRACKING_CONFIG": str(toml)}).port == 8111


def test_config_flag_wins_over_tracking_config_env(tmp_path: Path) -> None:
    from_env = write(tmp_path / "from-env.toml", "port = 8111\n")
    from_flag = write(tmp_path / "from-flag.toml", "port = 8222\n")

    config = settings.load(["--config", str(from_flag)], env={"TRACKING_CONFIG": str(from_env)})

    assert config.port == 8222


# --- the config file --------------------------------------------------------------------------


def test_default_config_file_in_working_directory_is_read(cwd: Path) -> None:
    write(cwd / settings.DEFAULT_CONFIG_FILE, "port = 8123\nworkers = 3\n")

    config = settings.load([], env={})

    assert (config.port, config.workers) == (8123, 3)


def test_missing_default_config_file_is_silently_skipped(cwd: Path) -> None:
    assert not (cwd / settings.DEFAULT_CONFIG_FILE).exists()

    assert settings.load([], env={}) == load_no_file()


def test_explicit_config_file_replaces_the_default_one(cwd: Path) -> None:
    write(cwd / settings.DEFAULT_CONFIG_FILE, "port = 8123\nworkers = 3\n")
    other = write(cwd / "other.toml", "port = 8456\n")

    config = settings.load(["--config", str(other)], env={})

    assert config.port == 8456
    assert config.workers == DEFAULT_WORKERS  # the default file was not merged in


@pytest.mark.parametrize("via", ["flag", "env"])
def test_explicit_config_file_that_does_not_exist_is_an_error(tmp_path: Path, via: str) -> None:
    missing = str(tmp_path / "missing.toml")
    argv, env = (["--config", missing], {}) if via == "flag" else ([], {"TRACKING_CONFIG": missing})

    with pytest.raises(ConfigError, match="does not exist") as info:
        settings.load(argv, env=env)
    assert missing in str(info.value)


def test_toml_syntax_error_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.toml", "port = \n")

    with pytest.raises(ConfigError) as info:
        settings.load(["--config", str(broken)], env={})
    assert str(broken) in str(info.value)


def test_syntax_error_in_default_config_file_is_not_skipped(cwd: Path) -> None:
    write(cwd / settings.DEFAULT_CONFIG_FILE, "port = [\n")

    with pytest.raises(ConfigError, match=re.escape(settings.DEFAULT_CONFIG_FILE)):
        settings.load([], env={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("prot = 8001\n", "prot", id="misspelt-key"),
        pytest.param("[server]\nport = 8001\n", "server", id="table"),
    ],
)
def test_unknown_keys_in_config_file_are_rejected(tmp_path: Path, text: str, key: str) -> None:
    toml = write(tmp_path / "unknown.toml", text)

    with pytest.raises(ConfigError, match=key):
        settings.load(["--config", str(toml)], env={})


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "toml", "field"),
    [
        pytest.param(["--port", "abc"], {}, "", "port", id="flag-port-not-a-number"),
        pytest.param(["--port", "70000"], {}, "", "port", id="flag-port-too-big"),
        pytest.param(["--port", "-1"], {}, "", "port", id="flag-port-negative"),
        pytest.param(["--workers", "0"], {}, "", "workers", id="flag-workers-zero"),
        pytest.param([], {"TRACKING_PORT": "abc"}, "", "port", id="env-port-not-a-number"),
        pytest.param([], {"TRACKING_WORKERS": "0"}, "", "workers", id="env-workers-zero"),
        pytest.param([], {}, 'port = "abc"\n', "port", id="file-port-not-a-number"),
        pytest.param([], {}, "port = 70000\n", "port", id="file-port-too-big"),
        pytest.param([], {}, "workers = 0\n", "workers", id="file-workers-zero"),
        pytest.param([], {}, "lease_timeout = 0\n", "lease_timeout", id="file-timeout-zero"),
        pytest.param([], {}, "state_dir = 5\n", "state_dir", id="file-state-dir-not-a-string"),
        pytest.param([], {}, "runtime_dir = 5\n", "runtime_dir", id="file-runtime-dir-int"),
        pytest.param([], {}, "runtime_dir = false\n", "runtime_dir", id="file-runtime-dir-bool"),
        pytest.param([], {}, "store = false\n", "store", id="file-store-not-a-string"),
    ],
)
def test_wrong_types_and_out_of_range_values_are_rejected_naming_the_field(
    tmp_path: Path, argv: list[str], env: dict[str, str], toml: str, field: str
) -> None:
    path = write(tmp_path / "values.toml", toml)

    with pytest.raises(ConfigError, match=field):
        settings.load(["--config", str(path), *argv], env=env)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_store_scheme_is_accepted_and_opens_a_store(scheme: str) -> None:
    config = load_no_file("--store", scheme + "tracking@db/tracking")
    assert open_store(config.store).kind in ("sqlite", "postgresql")


@pytest.mark.parametrize("store", ["mysql://db/tracking", "tracking.sqlite3"])
def test_unsupported_store_url_is_rejected(store: str) -> None:
    with pytest.raises(ConfigError, match="store"):
        load_no_file("--store", store)


@pytest.mark.parametrize(
    "store",
    [
        "postgresql://tracking@db.example:5432/tracking",
        "postgres://tracking@db.example/tracking",
        "postgresql:///tracking?host=/run/postgresql",
        # libpq's multi-host form, a port per host (asyncpg takes it too): failover.
        "postgresql://tracking@db1:5432,db2:5433/tracking?target_session_attrs=read-write",
        "postgresql://tracking:pw@[::1]:5432,[fd00::2]:5433,db3/tracking",
        "postgresql://tracking@db1,db2:5433/tracking",
        "postgresql://tracking@db1:,db2/tracking",  # an empty port: the default
    ],
)
def test_postgresql_store_urls_are_accepted_as_given(store: str) -> None:
    assert load_no_file("--store", store).store == store
    assert load_no_file(env={"TRACKING_STORE": store}).store == store


def test_a_malformed_store_url_is_rejected_without_repeating_its_password() -> None:
    with pytest.raises(ConfigError, match="store") as info:
        load_no_file("--store", "postgresql://tracking:hunter2@db.example:54x32/tracking")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "store",
    [
        "postgresql://tracking:hunter2@db1:5432,db2:54x32/tracking",
        "postgresql://tracking@db1:5432,db2:65536/tracking",
        "postgresql://tracking@db1:,db2:-1/tracking",
        "postgresql://tracking@db1:5432,db2:5433x/tracking",
    ],
)
def test_a_bad_port_of_one_host_in_a_multi_host_url_is_rejected(store: str) -> None:
    with pytest.raises(ConfigError, match="port") as info:
        load_no_file("--store", store)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Every parameter of libpq that holds a secret, whatever the case or %-encoding.
        (
            "postgresql://app@db/t?sslmode=verify-full&sslpassword=s3cret&sslkey=/etc/k.pem",
            "postgresql://app@db/t?sslmode=verify-full&sslpassword=***&sslkey=/etc/k.pem",
        ),
        ("postgresql://db/t?PASSWORD=s3cret", "postgresql://db/t?PASSWORD=***"),
        ("postgresql://db/t?%70assword=s3cret&x=1", "postgresql://db/t?%70assword=***&x=1"),
        ("postgresql://db/t?ssl%70assword=s3cret", "postgresql://db/t?ssl%70assword=***"),
        # Paths are not secrets: an operator needs to see which file was used.
        (
            "postgresql://app@/t?host=/run/pg&passfile=/etc/tracking/pgpass",
            "postgresql://app@/t?host=/run/pg&passfile=/etc/tracking/pgpass",
        ),
        # A password of several hosts' URL, and one with characters it should have encoded.
        (
            "postgresql://app:s3cret@db1:5432,db2:5433/t?target_session_attrs=read-write",
            "postgresql://app:***@db1:5432,db2:5433/t?target_session_attrs=read-write",
        ),
        ("postgresql://app:s3/c?r#et@db/t?x=1", "postgresql://app:***@db/t?x=1"),
    ],
)
def test_redact_url_hides_every_secret_libpq_knows(url: str, shown: str) -> None:
    assert urls.redact_url(url) == shown


def test_the_loggable_settings_hide_a_password_in_the_store_url() -> None:
    config = load_no_file("--store", "postgresql://app:hunter2@db/tracking?password=hunter3")

    assert settings.describe(config)["store"] == "postgresql://app:***@db/tracking?password=***"
    assert config.store == "postgresql://app:hunter2@db/tracking?password=hunter3"


# --- the committed config/tracking.toml -------------------------------------------------------


def committed_settings_lines() -> dict[str, str]:
    """The commented-out ``# key = value`` lines of the committed file, by key."""
    lines = re.findall(r"^# (\w+) = (.*)$", COMMITTED_TOML.read_text(), flags=re.MULTILINE)
    return dict(lines)


def test_committed_config_file_sets_nothing() -> None:
    with COMMITTED_TOML.open("rb") as file:
        assert tomllib.load(file) == {}


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="empty-env"),
        pytest.param(
            {"STATE_DIRECTORY": "/var/lib/tracking", "RUNTIME_DIRECTORY": "/run/tracking"},
            id="systemd-env",
        ),
    ],
)
def test_committed_config_file_loads_to_builtin_defaults(env: dict[str, str]) -> None:
    from_file = settings.load(["--config", str(COMMITTED_TOML)], env=env)
    from_nothing = settings.load(["--config", os.devnull], env=env)

    assert from_file == from_nothing


def test_committed_config_file_lists_every_setting_under_its_help_line() -> None:
    text = COMMITTED_TOML.read_text()

    assert set(committed_settings_lines()) == set(FIELDS)
    for name in FIELDS:
        assert re.search(f"^# {re.escape(settings.HELP[name])}\n# {name} = ", text, re.M), name


def test_committed_config_file_shows_the_builtin_defaults() -> None:
    lines = committed_settings_lines()
    # The CPU count differs between machines, so that line is a placeholder, not a number.
    assert "CPU count" in lines.pop("workers")
    uncommented = write(Path("uncommented.toml"), "".join(f"{k} = {v}\n" for k, v in lines.items()))

    assert tomllib.loads(uncommented.read_text())["admin_token"] == ""
    assert settings.load(["--config", str(uncommented)], env={}) == load_no_file()


def test_committed_config_file_states_the_precedence_at_the_top() -> None:
    header = COMMITTED_TOML.read_text().split("\n\n")[0]

    assert re.search(r"defaults < this file < TRACKING_\S+ environment .* < command-line", header)


# --- derived paths ----------------------------------------------------------------------------


def test_state_dir_defaults_to_systemd_state_directory() -> None:
    config = load_no_file(env={"STATE_DIRECTORY": "/var/lib/tracking"})

    assert config.state_dir == "/var/lib/tracking"
    assert config.runtime_dir == "/var/lib/tracking/run"
    assert config.store == "sqlite:////var/lib/tracking/tracking.sqlite3"


def test_state_dir_takes_the_first_of_several_systemd_state_directories() -> None:
    config = load_no_file(env={"STATE_DIRECTORY": "/var/lib/tracking:/var/lib/other"})

    assert config.state_dir == "/var/lib/tracking"


@pytest.mark.parametrize("layer", ["file", "env", "flag"])
def test_explicit_state_dir_wins_over_systemd_state_directory(tmp_path: Path, layer: str) -> None:
    toml = write(tmp_path / "s.toml", 'state_dir = "/srv/mine"\n' if layer == "file" else "")
    env = {"STATE_DIRECTORY": "/var/lib/tracking"}
    if layer == "env":
        env["TRACKING_STATE_DIR"] = "/srv/mine"
    argv = ["--state-dir", "/srv/mine"] if layer == "flag" else []

    config = settings.load(["--config", str(toml), *argv], env=env)

    assert config.state_dir == "/srv/mine"
    assert config.store == "sqlite:////srv/mine/tracking.sqlite3"


def test_runtime_dir_defaults_to_systemd_runtime_directory() -> None:
    config = load_no_file(env={"RUNTIME_DIRECTORY": "/run/tracking:/run/other"})

    assert config.runtime_dir == "/run/tracking"
    assert config.allocator_socket == "/run/tracking/allocator.sock"


def test_runtime_dir_defaults_to_run_under_state_dir(cwd: Path) -> None:
    assert load_no_file("--state-dir", "/srv/t").runtime_dir == "/srv/t/run"
    assert load_no_file().runtime_dir == str(cwd / "state" / "run")


def test_explicit_runtime_dir_wins_over_systemd_runtime_directory() -> None:
    config = load_no_file("--runtime-dir", "/tmp/mine", env={"RUNTIME_DIRECTORY": "/run/tracking"})

    assert config.runtime_dir == "/tmp/mine"


def test_explicit_store_is_kept_as_given() -> None:
    config = load_no_file("--state-dir", "/srv/t", "--store", "sqlite:////data/counter.sqlite3")

    assert config.store == "sqlite:////data/counter.sqlite3"


def test_default_paths_are_absolute_under_the_working_directory(cwd: Path) -> None:
    config = load_no_file()

    assert config.state_dir == str(cwd / settings.DEFAULT_STATE_DIR)
    assert config.store == f"sqlite:///{cwd}/{settings.DEFAULT_STATE_DIR}/tracking.sqlite3"


def test_relative_paths_are_made_absolute(cwd: Path) -> None:
    config = load_no_file("--state-dir", "var/st", "--runtime-dir", "rt")

    assert config.state_dir == str(cwd / "var" / "st")
    assert config.runtime_dir == str(cwd / "rt")
    assert config.store == f"sqlite:///{cwd}/var/st/tracking.sqlite3"
    assert os.path.isabs(config.allocator_socket)


# --- string parsing of env and flags ----------------------------------------------------------


def test_cors_origins_from_env_are_comma_separated() -> None:
    env = {"TRACKING_CORS_ORIGINS": " https://a.example, https://b.example, ,"}

    assert load_no_file(env=env).cors_origins == ("https://a.example", "https://b.example")


def test_cors_origins_from_file_are_a_list(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", 'cors_origins = ["https://a.example"]\n')

    assert settings.load(["--config", str(toml)], env={}).cors_origins == ("https://a.example",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("on", True),
        ("off", False),
        ("TRUE", True),
        ("Off", False),
    ],
)
def test_access_log_from_env_accepts_boolean_words(text: str, expected: bool) -> None:
    assert load_no_file(env={"TRACKING_ACCESS_LOG": text}).access_log is expected


def test_access_log_from_env_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match="access_log"):
        load_no_file(env={"TRACKING_ACCESS_LOG": "maybe"})


def test_access_log_flags_override_the_environment() -> None:
    assert load_no_file("--no-access-log", env={"TRACKING_ACCESS_LOG": "on"}).access_log is False
    assert load_no_file("--access-log", env={"TRACKING_ACCESS_LOG": "off"}).access_log is True
    assert load_no_file(env={"TRACKING_ACCESS_LOG": "off"}).access_log is False


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        pytest.param(["--log-level", "debug"], {}, id="flag"),
        pytest.param([], {"TRACKING_LOG_LEVEL": "Debug"}, id="env"),
    ],
)
def test_log_level_is_case_insensitive(argv: list[str], env: dict[str, str]) -> None:
    assert load_no_file(*argv, env=env).log_level == "DEBUG"


@pytest.mark.parametrize("level", ["verbose", "TRACE", ""])
def test_unknown_log_level_is_rejected(level: str) -> None:
    with pytest.raises(ConfigError, match="log_level"):
        load_no_file("--log-level", level)


# --- the allocator socket path limit ----------------------------------------------------------


def test_longest_allocator_socket_path_is_accepted() -> None:
    runtime_dir = "/" + "r" * (settings.MAX_SOCKET_PATH - len(SOCKET_NAME) - 1)

    config = load_no_file("--runtime-dir", runtime_dir)

    assert len(config.allocator_socket) == settings.MAX_SOCKET_PATH


@pytest.mark.parametrize(
    ("flag", "suffix"),
    [
        pytest.param("--runtime-dir", SOCKET_NAME, id="runtime-dir-set"),
        pytest.param("--state-dir", "/run" + SOCKET_NAME, id="runtime-dir-derived"),
    ],
)
def test_too_long_allocator_socket_path_is_an_error_naming_runtime_dir(
    flag: str, suffix: str
) -> None:
    # One byte over the limit.
    directory = "/" + "r" * (settings.MAX_SOCKET_PATH - len(suffix))

    with pytest.raises(ConfigError, match="runtime_dir"):
        load_no_file(flag, directory)


# --- the Config object ------------------------------------------------------------------------


def test_config_is_frozen() -> None:
    config = load_no_file()

    with pytest.raises(AttributeError, match="immutable"):
        config.port = 1  # type: ignore[misc]
    assert config.port == 8000


def test_run_py_help_lists_every_option() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKING_")}

    result = subprocess.run(
        [sys.executable, "run.py", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    options = set(re.findall(r"--[a-z][a-z0-9-]*", result.stdout))
    expected = {"--config", "--no-access-log"} | {"--" + n.replace("_", "-") for n in FIELDS}
    assert expected <= options, expected - options


def imported_modules(path: Path) -> set[str]:
    """The absolute module names a Python file imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_config_imports_none_of_our_other_packages() -> None:
    """config/ is the ground floor: an import from it back up into a package that imports the
    settings (settings -> allocator.store -> settings) is a circle."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ours = {*pyproject["tool"]["setuptools"]["packages"], "run", "tests"} - {"config"}
    upward = sorted(
        f"{path.relative_to(REPO)} imports {name}"
        for path in (REPO / "config").rglob("*.py")
        for name in imported_modules(path)
        if name.partition(".")[0] in ours
    )
    assert upward == []
