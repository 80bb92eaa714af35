"""Operator settings: flags, then CONSPIRATOR_* environment variables, then defaults."""

from __future__ import annotations

import argparse

import pytest

from conspirator.operator.settings import Settings, SettingsError, add_arguments, resolve


def parse(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return resolve(p.parse_args(argv), env or {})


def test_defaults() -> None:
    assert parse([]) == Settings()


def test_flags_win_over_the_environment() -> None:
    env = {"CONSPIRATOR_METRICS_PORT": "9000", "CONSPIRATOR_REPLAN_INTERVAL": "60",
           "CONSPIRATOR_NAMESPACES": "a, b", "CONSPIRATOR_STANDALONE": "yes",
           "CONSPIRATOR_DEFAULT_PROFILES": "false", "CONSPIRATOR_LOG_LEVEL": "debug"}
    s = parse(["--metrics-port", "9100", "--namespace", "c"], env)
    assert (s.metrics_port, s.replan_interval, s.namespaces) == (9100, 60.0, ("c",))
    assert s.standalone and not s.default_profiles and s.log_level == "DEBUG"
    assert parse([], env).namespaces == ("a", "b")
    assert parse(["--default-profiles"], env).default_profiles


def test_bad_values_are_refused_with_their_source() -> None:
    with pytest.raises(SettingsError, match="CONSPIRATOR_MAX_MIGRATIONS"):
        parse([], {"CONSPIRATOR_MAX_MIGRATIONS": "-1"})
    with pytest.raises(SystemExit):
        parse(["--liveness-port", "70000"])
    with pytest.raises(SystemExit):
        parse(["--milp-time-limit", "0"])
