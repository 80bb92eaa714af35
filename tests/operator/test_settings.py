"""Operator settings: flags, then CONSPIRATOR_* environment variables, then defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from conspirator.operator.settings import (
    Settings,
    SettingsError,
    add_arguments,
    operator_namespace,
    resolve,
)


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


def test_data_path_settings() -> None:
    s = parse([])
    assert (s.namespace, s.agent_tokens_secret, s.token_resync_interval) == (
        None, "conspirator-agent-tokens", 60.0)
    env = {"CONSPIRATOR_NAMESPACE": "ops", "CONSPIRATOR_AGENT_TOKENS_SECRET": "tok",
           "CONSPIRATOR_TOKEN_RESYNC_INTERVAL": "0"}
    s = parse([], env)
    assert (s.namespace, s.agent_tokens_secret, s.token_resync_interval) == ("ops", "tok", 0.0)
    s = parse(["--operator-namespace", "mine", "--agent-tokens-secret", "x.y"], env)
    assert (s.namespace, s.agent_tokens_secret) == ("mine", "x.y")
    # --namespace stays the served namespaces.
    assert parse(["--namespace", "a"], env).namespaces == ("a",)
    # Empty disables the aggregate, from the flag or the variable (an empty variable
    # usually means "unset"; not here).
    assert parse(["--agent-tokens-secret", ""]).agent_tokens_secret == ""
    assert parse([], {"CONSPIRATOR_AGENT_TOKENS_SECRET": ""}).agent_tokens_secret == ""
    with pytest.raises(SettingsError, match="CONSPIRATOR_NAMESPACE"):
        parse([], {"CONSPIRATOR_NAMESPACE": "Not_A_Namespace"})
    with pytest.raises(SettingsError, match="CONSPIRATOR_AGENT_TOKENS_SECRET"):
        parse([], {"CONSPIRATOR_AGENT_TOKENS_SECRET": "UPPER"})


def test_operator_namespace_fallbacks(tmp_path: Path) -> None:
    sa = tmp_path / "namespace"
    assert operator_namespace(Settings(namespace="ops"), {"POD_NAMESPACE": "p"}, sa) == "ops"
    assert operator_namespace(Settings(), {"POD_NAMESPACE": "p"}, sa) == "p"
    assert operator_namespace(Settings(), {}, sa) == "conspirator-system"
    sa.write_text("from-sa\n")
    assert operator_namespace(Settings(), {"POD_NAMESPACE": ""}, sa) == "from-sa"
