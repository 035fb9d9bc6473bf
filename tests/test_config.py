"""Settings: precedence, sources, coercion, validation messages, redaction and default paths.

Every test passes `env=` explicitly, so the real environment never leaks in.
"""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from ecoq.config import (
    CREDENTIAL_ENV_VARS,
    KNOWN_ENV_VARS,
    Settings,
    all_keys,
    default_data_dir,
    describe,
    env_var_name,
    load_settings,
    redact_url,
    setting_value,
    user_config_path,
)
from ecoq.errors import ConfigError, UsageError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "ecoq.example.toml"
ALL_KEYS = all_keys()  # leaf keys, nested tables included (forecast.watttime.base_url)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A minimal environment whose HOME is an empty temporary directory."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "PATH": "/usr/bin"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def value(settings: Settings, key: str) -> object:
    return setting_value(settings, key)


def flat_keys(table: dict[str, object], prefix: str = "") -> list[str]:
    """The dotted leaf keys of a parsed TOML table."""
    keys: list[str] = []
    for name, item in table.items():
        dotted = f"{prefix}{name}"
        keys += flat_keys(item, dotted + ".") if isinstance(item, dict) else [dotted]
    return keys


# --- defaults and the example file ------------------------------------------------------------


def test_defaults_without_any_file(env: dict[str, str]) -> None:
    settings = load_settings(env=env)
    assert settings.config_file is None
    assert dict(settings.sources) == dict.fromkeys(ALL_KEYS, "default")
    assert settings.planner.min_saving == 0.02
    assert settings.planner.default_duration_s == 3600
    assert settings.planner.averaging == "interval"
    assert settings.planner.fail_policy == "now"
    assert settings.forecast.provider == "bundled"
    assert settings.forecast.max_age_s == 21600
    assert settings.forecast.refresh_interval_s == 1800
    assert settings.site.gpus == -1
    assert settings.daemon.tick_interval_s == 5.0
    assert settings.daemon.kill_grace_s == 30.0
    home = Path(env["HOME"])
    assert settings.data_dir == home / ".local/share/ecoq"
    assert settings.database_url == f"sqlite:///{home}/.local/share/ecoq/ecoq.db"


def test_settings_constructed_directly_are_the_defaults(env: dict[str, str]) -> None:
    loaded = load_settings(env=env)
    assert Settings().planner == loaded.planner
    assert Settings().daemon == loaded.daemon


def test_example_file_lists_every_key_with_its_default(env: dict[str, str]) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    listed = flat_keys(data)
    assert sorted(listed) == sorted(ALL_KEYS)
    settings = load_settings(config_file=EXAMPLE, env=env)
    defaults = Settings()
    for key in ALL_KEYS:
        assert value(settings, key) == value(defaults, key), key
        assert settings.sources[key].startswith(f"file {EXAMPLE}:"), key
    assert settings.config_file == EXAMPLE


def test_example_file_documents_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith(("#", "[")):
            assert lines[i - 1].startswith("#"), f"undocumented key: {line}"


# --- which file is read -----------------------------------------------------------------------


def test_user_config_file_under_xdg_config_home(tmp_path: Path, env: dict[str, str]) -> None:
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    path = write(tmp_path / "xdg/ecoq/ecoq.toml", "[site]\nzone = 'DE'\n")
    settings = load_settings(env=env)
    assert settings.config_file == path
    assert settings.site.zone == "DE"
    assert settings.sources["site.zone"] == f"file {path}:2"


def test_user_config_file_under_home_dot_config(env: dict[str, str]) -> None:
    path = write(Path(env["HOME"]) / ".config/ecoq/ecoq.toml", "[site]\nzone = 'FR'\n")
    assert load_settings(env=env).config_file == path
    assert user_config_path(env) == path


def test_ecoq_config_is_used_and_must_exist(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "other.toml", "[site]\nzone = 'ES'\n")
    write(Path(env["HOME"]) / ".config/ecoq/ecoq.toml", "[site]\nzone = 'FR'\n")
    assert load_settings(env={**env, "ECOQ_CONFIG": str(path)}).site.zone == "ES"
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="ECOQ_CONFIG") as info:
        load_settings(env={**env, "ECOQ_CONFIG": str(missing)})
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_config_file_argument_wins_and_must_exist(tmp_path: Path, env: dict[str, str]) -> None:
    chosen = write(tmp_path / "chosen.toml", "[site]\nzone = 'NO'\n")
    other = write(tmp_path / "other.toml", "[site]\nzone = 'ES'\n")
    settings = load_settings(config_file=chosen, env={**env, "ECOQ_CONFIG": str(other)})
    assert settings.site.zone == "NO"
    with pytest.raises(ConfigError, match=r"--config.*does not exist"):
        load_settings(config_file=tmp_path / "nope.toml", env=env)


def test_config_file_tilde_is_expanded_with_env_home(env: dict[str, str]) -> None:
    path = write(Path(env["HOME"]) / "ecoq.toml", "[site]\nzone = 'BR'\n")
    settings = load_settings(config_file=Path("~/ecoq.toml"), env=env)
    assert settings.config_file == path
    assert settings.site.zone == "BR"


# --- precedence and sources -------------------------------------------------------------------


def test_precedence_default_file_env_cli(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path / "ecoq.toml",
        """\
        # comment
        [planner]
        min_saving = 0.1
        default_duration_s = 60

        [daemon]
        tick_interval_s = 2.0
        kill_grace_s = 5
        """,
    )
    env |= {"ECOQ_PLANNER__DEFAULT_DURATION_S": "120", "ECOQ_DAEMON__TICK_INTERVAL_S": "3"}
    settings = load_settings(
        config_file=path,
        env=env,
        overrides={"daemon.tick_interval_s": 4.5, "planner.averaging": None},
        override_flags={"daemon.tick_interval_s": "--tick"},
    )
    assert settings.planner.min_saving == 0.1
    assert settings.sources["planner.min_saving"] == f"file {path}:3"
    assert settings.planner.default_duration_s == 120
    assert settings.sources["planner.default_duration_s"] == "env ECOQ_PLANNER__DEFAULT_DURATION_S"
    assert settings.daemon.tick_interval_s == 4.5
    assert settings.sources["daemon.tick_interval_s"] == "cli --tick"
    assert settings.daemon.kill_grace_s == 5.0  # an int in TOML is fine for a float key
    assert isinstance(settings.daemon.kill_grace_s, float)
    assert settings.sources["planner.averaging"] == "default"  # None = flag not given
    assert settings.sources["site.zone"] == "default"


def test_cli_override_without_flag_name_is_sourced_by_key(env: dict[str, str]) -> None:
    settings = load_settings(env=env, overrides={"site.zone": "DE"})
    assert settings.sources["site.zone"] == "cli site.zone"


def test_cli_strings_are_coerced(env: dict[str, str]) -> None:
    settings = load_settings(
        env=env,
        overrides={"planner.min_saving": "0.5", "site.gpus": "2", "paths.data_dir": Path("/d")},
    )
    assert settings.planner.min_saving == 0.5
    assert settings.site.gpus == 2
    assert settings.data_dir == Path("/d")


def test_env_strings_are_coerced(env: dict[str, str]) -> None:
    env |= {
        "ECOQ_PLANNER__MIN_SAVING": " 0.05 ",
        "ECOQ_SITE__GPUS": "4",
        "ECOQ_DAEMON__KILL_GRACE_S": "10",
        "ECOQ_SITE__ZONE": "US-CAL-CISO",
        "ECOQ_PLANNER__FAIL_POLICY": "latest",
    }
    settings = load_settings(env=env)
    assert settings.planner.min_saving == 0.05
    assert settings.site.gpus == 4
    assert settings.daemon.kill_grace_s == 10.0
    assert settings.site.zone == "US-CAL-CISO"
    assert settings.planner.fail_policy == "latest"
    assert env_var_name("planner.min_saving") == "ECOQ_PLANNER__MIN_SAVING"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)],
)
def test_bool_coercion(text: str, expected: bool) -> None:
    from ecoq.config import _check, _Key, _Origin  # no bool key yet: test the coercion directly

    key = _Key("x.flag", "x", "flag", bool, False, ())
    assert _check(key, text, _Origin("env ECOQ_X__FLAG", "ECOQ_X__FLAG", "fix")) is expected
    with pytest.raises(ConfigError, match='"true", "false", "1" or "0"'):
        _check(key, "maybe", _Origin("env ECOQ_X__FLAG", "ECOQ_X__FLAG", "fix"))


def test_database_url_alias_and_double_underscore_wins(env: dict[str, str]) -> None:
    alias = "postgresql+psycopg://ecoq@db/ecoq"
    settings = load_settings(env={**env, "ECOQ_DATABASE_URL": alias})
    assert settings.database_url == alias
    assert settings.sources["database.url"] == "env ECOQ_DATABASE_URL"
    both = {**env, "ECOQ_DATABASE_URL": alias, "ECOQ_DATABASE__URL": "sqlite:////tmp/x.db"}
    settings = load_settings(env=both)
    assert settings.database_url == "sqlite:////tmp/x.db"
    assert settings.sources["database.url"] == "env ECOQ_DATABASE__URL"


def test_other_ecoq_variables_are_ignored(env: dict[str, str]) -> None:
    env |= dict.fromkeys(KNOWN_ENV_VARS - {"ECOQ_CONFIG", "ECOQ_DATABASE_URL"}, "x")
    env |= {"ECOQ_SOMETHING_ELSE": "1", "NOT_ECOQ__X": "1"}
    assert dict(load_settings(env=env).sources) == dict.fromkeys(ALL_KEYS, "default")


def test_credential_env_vars() -> None:
    assert (
        frozenset(
            {"ECOQ_WATTTIME_USERNAME", "ECOQ_WATTTIME_PASSWORD", "ECOQ_ELECTRICITYMAPS_TOKEN"}
        )
        == CREDENTIAL_ENV_VARS
    )
    assert CREDENTIAL_ENV_VARS <= KNOWN_ENV_VARS


# --- paths ------------------------------------------------------------------------------------


def test_default_paths_follow_xdg(tmp_path: Path) -> None:
    env = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg", "XDG_DATA_HOME": "/data"}
    assert user_config_path(env) == Path("/cfg/ecoq/ecoq.toml")
    assert default_data_dir(env) == Path("/data/ecoq")
    plain = {"HOME": "/home/u"}
    assert user_config_path(plain) == Path("/home/u/.config/ecoq/ecoq.toml")
    assert default_data_dir(plain) == Path("/home/u/.local/share/ecoq")
    relative = {"HOME": "/home/u", "XDG_DATA_HOME": "rel", "XDG_CONFIG_HOME": ""}
    assert default_data_dir(relative) == Path("/home/u/.local/share/ecoq")
    assert user_config_path(relative) == Path("/home/u/.config/ecoq/ecoq.toml")


def test_data_dir_from_xdg_and_database_url(tmp_path: Path, env: dict[str, str]) -> None:
    settings = load_settings(env={**env, "XDG_DATA_HOME": str(tmp_path / "d")})
    assert settings.data_dir == tmp_path / "d/ecoq"
    assert settings.database_url == f"sqlite:///{tmp_path}/d/ecoq/ecoq.db"


def test_data_dir_tilde_expanded(env: dict[str, str]) -> None:
    settings = load_settings(env={**env, "ECOQ_PATHS__DATA_DIR": "~/ecoq-data"})
    assert settings.paths.data_dir == f"{env['HOME']}/ecoq-data"
    assert settings.data_dir == Path(env["HOME"]) / "ecoq-data"
    assert settings.database_url == f"sqlite:///{env['HOME']}/ecoq-data/ecoq.db"


# --- validation -------------------------------------------------------------------------------


def load_file(tmp_path: Path, env: dict[str, str], text: str) -> tuple[Path, str]:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path, env=env)
    return path, str(info.value)


def test_config_error_is_a_usage_error() -> None:
    assert issubclass(ConfigError, UsageError)  # the CLI exits 2


def test_unknown_key_in_file_names_line_and_suggests(tmp_path: Path, env: dict[str, str]) -> None:
    path, msg = load_file(tmp_path, env, "[site]\nzone = 'DE'\n\n[planner]\nmin_savings = 0.1\n")
    assert f"{path}:5" in msg
    assert "'min_savings'" in msg
    assert "did you mean planner.min_saving" in msg
    assert "valid keys are min_saving, default_duration_s, averaging, fail_policy" in msg
    assert "Fix: edit" in msg and "line 5" in msg


def test_unknown_section_suggests(tmp_path: Path, env: dict[str, str]) -> None:
    path, msg = load_file(tmp_path, env, "[planer]\nmin_saving = 0.1\n")
    assert f"{path}:1" in msg
    assert "'planer' is not a section" in msg
    assert "did you mean planner" in msg


def test_key_outside_a_section(tmp_path: Path, env: dict[str, str]) -> None:
    path, msg = load_file(tmp_path, env, "min_saving = 0.1\n")
    assert f"{path}:1" in msg
    assert "did you mean [planner] min_saving" in msg


def test_section_that_is_not_a_table(tmp_path: Path, env: dict[str, str]) -> None:
    _, msg = load_file(tmp_path, env, "planner = 3\n")
    assert "'planner' is not a section" in msg


def test_unknown_nested_table_is_unknown_key(tmp_path: Path, env: dict[str, str]) -> None:
    path, msg = load_file(tmp_path, env, "[forecast]\nprovider = 'bundled'\n\n[forecast.wattime]\n")
    assert f"{path}:4" in msg
    assert "unknown key 'wattime' in [forecast]" in msg
    assert "tables [forecast.electricitymaps], [forecast.ukgrid], [forecast.watttime]" in msg


def test_wrong_type_in_file(tmp_path: Path, env: dict[str, str]) -> None:
    path, msg = load_file(tmp_path, env, '[planner]\n\ndefault_duration_s = "1h"\n')
    assert f"{path}:3" in msg
    assert "planner.default_duration_s = '1h' is a string" in msg
    assert "expected an integer" in msg


def test_float_for_int_and_bool_for_int_rejected(tmp_path: Path, env: dict[str, str]) -> None:
    _, msg = load_file(tmp_path, env, "[site]\ngpus = true\n[forecast]\nmax_age_s = 1.5\n")
    assert msg.startswith("invalid configuration:\n")  # both problems, one per line
    assert "site.gpus = True is a boolean; expected an integer" in msg
    assert "forecast.max_age_s = 1.5 is a float; expected an integer" in msg


def test_out_of_range_in_file(tmp_path: Path, env: dict[str, str]) -> None:
    path, msg = load_file(tmp_path, env, "[planner]\nmin_saving = 2\n")
    assert f"{path}:2" in msg
    assert "planner.min_saving = 2 is out of range" in msg
    assert "a fraction between 0 and 1" in msg


def test_non_finite_rejected(tmp_path: Path, env: dict[str, str]) -> None:
    _, msg = load_file(tmp_path, env, "[daemon]\ntick_interval_s = inf\n")
    assert "is not finite" in msg


@pytest.mark.parametrize(
    ("var", "text", "expected"),
    [
        ("ECOQ_PLANNER__MIN_SAVING", "-0.1", "between 0 and 1"),
        ("ECOQ_PLANNER__MIN_SAVING", "2%", "cannot be read as a number"),
        ("ECOQ_PLANNER__DEFAULT_DURATION_S", "-5", "seconds > 0"),
        ("ECOQ_PLANNER__DEFAULT_DURATION_S", "1h", "cannot be read as an integer"),
        ("ECOQ_FORECAST__MAX_AGE_S", "0", "seconds > 0"),
        ("ECOQ_FORECAST__REFRESH_INTERVAL_S", "-1", "seconds > 0"),
        ("ECOQ_DAEMON__TICK_INTERVAL_S", "0", "seconds > 0"),
        ("ECOQ_DAEMON__KILL_GRACE_S", "-1", "seconds >= 0"),
        ("ECOQ_SITE__GPUS", "-2", "an integer >= -1"),
        ("ECOQ_SITE__GPUS", "", "cannot be read as an integer"),
    ],
)
def test_bad_env_values(env: dict[str, str], var: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**env, var: text})
    msg = str(info.value)
    assert f"environment variable {var}" in msg
    assert repr(text) in msg
    assert expected in msg
    assert f"Fix: change or unset {var}" in msg


def test_zero_kill_grace_and_min_saving_bounds_allowed(env: dict[str, str]) -> None:
    env |= {
        "ECOQ_DAEMON__KILL_GRACE_S": "0",
        "ECOQ_PLANNER__MIN_SAVING": "1",
        "ECOQ_SITE__GPUS": "0",
    }
    settings = load_settings(env=env)
    assert (settings.daemon.kill_grace_s, settings.planner.min_saving) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("key", "bad", "valid"),
    [
        ("planner.averaging", "simpson", "'interval', 'trapezoid'"),
        ("planner.fail_policy", "never", "'now', 'latest'"),
    ],
)
def test_bad_enum_lists_valid_values(env: dict[str, str], key: str, bad: str, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, overrides={key: bad}, override_flags={key: "--thing"})
    msg = str(info.value)
    assert msg.startswith(f"--thing: {key} = {bad!r} is not a valid choice")
    assert f"expected one of {valid}" in msg
    assert "Fix: change --thing" in msg


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("wattime", "unknown provider 'wattime'; give one or more of bundled, file, watttime"),
        ("", "no provider"),
        ("ukgrid, ukgrid", "names a provider twice"),
        ("watttime, ukgrid", "mixes signal types (watttime is marginal, ukgrid is average)"),
    ],
)
def test_bad_provider_chain(env: dict[str, str], value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            env=env,
            overrides={"forecast.provider": value},
            override_flags={"forecast.provider": "--provider"},
        )
    assert message in str(info.value)
    assert "Fix: change --provider" in str(info.value)


def test_provider_chain_of_one_signal(env: dict[str, str]) -> None:
    from ecoq.config import provider_chain

    cfg = load_settings(env={**env, "ECOQ_FORECAST__PROVIDER": "ukgrid, electricitymaps"})
    assert provider_chain(cfg.forecast.provider) == ["ukgrid", "electricitymaps"]


def test_bad_cli_typed_value(env: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^command-line override: site.gpus = 1.5 is a float; expected an integer",
    ):
        load_settings(env=env, overrides={"site.gpus": 1.5})


def test_unknown_cli_key(env: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown setting 'planner.min_savin'.*planner.min_saving"
    ):
        load_settings(env=env, overrides={"planner.min_savin": 0.1})


def test_unknown_env_var_suggests(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**env, "ECOQ_PLANNER__MIN_SAVINGS": "0.1"})
    msg = str(info.value)
    assert "ECOQ_PLANNER__MIN_SAVINGS is not a setting" in msg
    assert "did you mean ECOQ_PLANNER__MIN_SAVING" in msg
    assert "Fix: rename or unset ECOQ_PLANNER__MIN_SAVINGS" in msg
    with pytest.raises(
        ConfigError, match="ECOQ_FORECAST__WATTTIME__BASE_UR is not a setting.*BASE_URL"
    ):
        load_settings(env={**env, "ECOQ_FORECAST__WATTTIME__BASE_UR": "https://x"})


def test_file_provider_needs_a_file(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"ECOQ_FORECAST__PROVIDER.*needs forecast.file"):
        load_settings(env={**env, "ECOQ_FORECAST__PROVIDER": "file"})
    env |= {"ECOQ_FORECAST__PROVIDER": "file", "ECOQ_FORECAST__FILE": "~/f.csv"}
    assert load_settings(env=env).forecast.file == f"{env['HOME']}/f.csv"


def test_malformed_toml_names_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    path, msg = load_file(tmp_path, env, "[planner]\nmin_saving = \n")
    assert f"{path}: invalid TOML" in msg
    assert "line 2" in msg


def test_unreadable_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(config_file=path, env=env)


def test_line_numbers_with_dotted_and_quoted_keys(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path / "c.toml",
        """\
        site.zone = "DE"
        [ "planner" ]
        "min_saving" = 0.5
        [daemon]
        # kill_grace_s = 1
        kill_grace_s = 2
        """,
    )
    settings = load_settings(config_file=path, env=env)
    assert settings.sources["site.zone"] == f"file {path}:1"
    assert settings.sources["planner.min_saving"] == f"file {path}:3"
    assert settings.sources["daemon.kill_grace_s"] == f"file {path}:6"


# --- display ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://user:s3cr:t@host/db", "postgresql+psycopg://user:***@host/db"),
        ("postgresql://user:p@ss/word@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://:pw@host/db", "postgresql://:***@host/db"),
        ("sqlite:////tmp/ecoq.db", "sqlite:////tmp/ecoq.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_describe_redacts_and_lists_every_key(env: dict[str, str]) -> None:
    url = "postgresql+psycopg://user:hunter2@host/db"
    settings = load_settings(env={**env, "ECOQ_DATABASE_URL": url})
    rows = describe(settings)
    assert [key for key, _, _ in rows] == ALL_KEYS
    shown = {key: (text, source) for key, text, source in rows}
    assert shown["database.url"] == (
        "'postgresql+psycopg://user:***@host/db'",
        "env ECOQ_DATABASE_URL",
    )
    assert "hunter2" not in repr(rows)
    assert "hunter2" not in repr(settings)
    assert shown["planner.min_saving"] == ("0.02", "default")


def test_describe_shows_what_empty_defaults_mean(env: dict[str, str]) -> None:
    settings = load_settings(env={**env, "XDG_DATA_HOME": "/x"})
    shown = {key: text for key, text, _ in describe(settings)}
    assert shown["paths.data_dir"] == "'' (/x/ecoq)"
    assert shown["database.url"] == "'' (sqlite:////x/ecoq/ecoq.db)"
    assert shown["site.gpus"] == "-1 (detect)"
    assert shown["site.name"].startswith("'' (")


def test_import_is_stdlib_only_and_lazy() -> None:
    code = (
        "import sys; before = set(sys.modules); import ecoq.config; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'ecoq'})); print('tomllib' in new)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "False"]


# --- nested tables: [forecast.watttime], [forecast.electricitymaps], [forecast.ukgrid] ----------


def test_provider_tables_defaults(env: dict[str, str]) -> None:
    forecast = load_settings(env=env).forecast
    assert forecast.watttime.base_url == "https://api.watttime.org"
    assert forecast.watttime.signal_type == "co2_moer"
    assert forecast.electricitymaps.base_url == "https://api.electricitymaps.com"
    assert forecast.electricitymaps.emission_factor == "lifecycle"
    assert forecast.ukgrid.base_url == "https://api.carbonintensity.org.uk"
    assert forecast.ukgrid.timeout_s == 10.0
    assert env_var_name("forecast.watttime.base_url") == "ECOQ_FORECAST__WATTTIME__BASE_URL"


def test_provider_tables_from_file_env_and_cli(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path / "c.toml",
        """\
        [forecast]
        provider = "watttime"

        [forecast.watttime]
        base_url = "https://proxy.example/wt/"
        timeout_s = 3
        [forecast.electricitymaps]
        emission_factor = "direct"
        """,
    )
    env |= {"ECOQ_FORECAST__UKGRID__TIMEOUT_S": "2.5"}
    settings = load_settings(
        config_file=path, env=env, overrides={"forecast.watttime.signal_type": "co2_aoer"}
    )
    forecast = settings.forecast
    assert forecast.provider == "watttime"
    assert forecast.watttime.base_url == "https://proxy.example/wt/"
    assert forecast.watttime.timeout_s == 3.0
    assert forecast.watttime.signal_type == "co2_aoer"
    assert forecast.electricitymaps.emission_factor == "direct"
    assert forecast.ukgrid.timeout_s == 2.5
    assert settings.sources["forecast.watttime.base_url"] == f"file {path}:5"
    assert settings.sources["forecast.ukgrid.timeout_s"] == "env ECOQ_FORECAST__UKGRID__TIMEOUT_S"
    shown = {key: text for key, text, _ in describe(settings)}
    assert shown["forecast.watttime.timeout_s"] == "3.0"


def test_dotted_nested_keys_in_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "c.toml", '[forecast]\nukgrid.base_url = "http://mirror:8080"\n')
    settings = load_settings(config_file=path, env=env)
    assert settings.forecast.ukgrid.base_url == "http://mirror:8080"
    assert settings.sources["forecast.ukgrid.base_url"] == f"file {path}:2"


@pytest.mark.parametrize(
    ("var", "text", "expected"),
    [
        ("ECOQ_FORECAST__WATTTIME__BASE_URL", "https://api.watttime.org/v3", "without it"),
        ("ECOQ_FORECAST__ELECTRICITYMAPS__BASE_URL", "api.electricitymaps.com", "http(s) URL"),
        ("ECOQ_FORECAST__UKGRID__TIMEOUT_S", "0", "seconds > 0"),
        ("ECOQ_FORECAST__WATTTIME__SIGNAL_TYPE", "health_damage", "'co2_moer', 'co2_aoer'"),
        ("ECOQ_FORECAST__ELECTRICITYMAPS__EMISSION_FACTOR", "x", "'lifecycle', 'direct'"),
    ],
)
def test_bad_provider_settings(env: dict[str, str], var: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**env, var: text})
    assert expected in str(info.value)
    assert var in str(info.value)


def test_provider_table_must_be_a_table(tmp_path: Path, env: dict[str, str]) -> None:
    _, msg = load_file(tmp_path, env, "[forecast]\nwatttime = 3\n")
    assert "forecast.watttime must be a table [forecast.watttime]" in msg
    _, msg = load_file(tmp_path, env, "[forecast.watttime]\nbase = 'x'\n")
    assert "unknown key 'base' in [forecast.watttime]" in msg
    assert "valid keys are base_url, timeout_s, signal_type" in msg
