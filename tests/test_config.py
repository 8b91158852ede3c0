"""Configuration: file, environment overrides, defaults, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobbridge import ConfigError, Engine, load_config
from jobbridge.backends.local import LocalBackend


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobbridge.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(tmp_path: Path) -> None:
    config = load_config(environ={"JOBBRIDGE_DATA_DIR": str(tmp_path)})
    assert config.data_dir == tmp_path
    assert config.database_url == f"sqlite:///{tmp_path / 'jobbridge.db'}"
    assert config.backends["local"].kind == "local"
    assert config.default_backend == "local"


def test_a_file_names_backends_and_engine_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
data_dir = "{tmp_path}/data"
default_backend = "small"
[engine]
refresh_interval = 2.5
[backends.small]
kind = "local"
max_jobs_in_flight = 2
grace_period = 0.5
""",
    )
    config = load_config(path, environ={})
    assert config.engine.refresh_interval == 2.5
    assert config.backends["small"].options == {"max_jobs_in_flight": 2, "grace_period": 0.5}
    with Engine.from_config(config) as engine:
        backend = engine.backend()
        assert isinstance(backend, LocalBackend)
        assert backend.name == "small" and backend.options.max_jobs_in_flight == 2
        assert set(engine.backends) == {"local", "small"}


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'database_url = "sqlite:///from-file.db"\n')
    config = load_config(
        path,
        environ={
            "JOBBRIDGE_DATABASE_URL": "sqlite:///from-env.db",
            "JOBBRIDGE_DATA_DIR": str(tmp_path),
        },
    )
    assert config.database_url == "sqlite:///from-env.db"
    assert (
        load_config(
            environ={"JOBBRIDGE_CONFIG": str(path), "JOBBRIDGE_DATA_DIR": "/x"}
        ).database_url
        == "sqlite:///from-file.db"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine]\nrefresh_interval = -1\n", "engine.refresh_interval"),
        ("[engine]\nrefresh_intreval = 1\n", "refresh_intreval"),
        ('default_backend = "nowhere"\n', "nowhere"),
        ("this is not toml", "not valid TOML"),
        ("[backends.x]\nmax_jobs_in_flight = 2\n", "kind"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ={})


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", environ={})


def test_bad_backend_options_name_the_backend_and_the_option(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.fast]\nkind = "local"\ngrace_perod = 1\n')
    with pytest.raises(ConfigError, match=r"(?s)'fast'.*grace_perod"):
        Engine.from_config(load_config(path, environ={"JOBBRIDGE_DATA_DIR": str(tmp_path)}))


def test_an_unknown_backend_kind_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.hpc]\nkind = "slurmm"\n')
    with pytest.raises(ConfigError, match=r"'hpc' has kind 'slurmm'.*kinds: .*local"):
        Engine.from_config(load_config(path, environ={"JOBBRIDGE_DATA_DIR": str(tmp_path)}))
