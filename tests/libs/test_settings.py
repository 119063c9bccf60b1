import pytest

from libs.errors import ConfigError
from libs.settings import load_settings
from services.coordinator.settings import CoordinatorSettings
from services.solver.settings import SolverSettings


def test_defaults_follow_the_paper(monkeypatch):
    s = load_settings(SolverSettings)
    assert (s.solve_n, s.solve_temperature, s.solve_top_p, s.solve_max_tokens) == (5, 0.7, 0.95, 2048)


def test_env_prefix(monkeypatch):
    monkeypatch.setenv("SQ_SOLVE_N", "3")
    monkeypatch.setenv("SQ_LOG_LEVEL", "debug")
    s = load_settings(SolverSettings)
    assert s.solve_n == 3 and s.log_level == "DEBUG"


def test_bad_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("SQ_GRPC_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="SQ_GRPC_PORT='not-a-port'"):
        load_settings(SolverSettings)


def test_several_bad_values_all_named(monkeypatch):
    monkeypatch.setenv("SQ_MAX_OUTSTANDING", "0")
    monkeypatch.setenv("SQ_RUN_SELECTION_RULE", "best")
    with pytest.raises(ConfigError) as e:
        load_settings(CoordinatorSettings)
    assert "SQ_MAX_OUTSTANDING" in str(e.value) and "SQ_RUN_SELECTION_RULE" in str(e.value)


def test_store_url_scheme(monkeypatch):
    monkeypatch.setenv("SQ_STORE_URL", "gs://bucket")
    with pytest.raises(ConfigError, match="SQ_STORE_URL"):
        load_settings(SolverSettings)
