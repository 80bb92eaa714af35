"""Operator settings: command-line flags, each with an environment variable fallback.

Precedence: flag, then the ``CONSPIRATOR_*`` environment variable, then the default.
docs/operator.md lists them all (``conspirator operator --help`` too).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A flag or environment variable with a bad value."""


@dataclass(frozen=True, slots=True)
class Settings:
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()
    peering: str = "conspirator"
    standalone: bool = False
    priority: int | None = None
    peering_lifetime: int = 60
    liveness_port: int = 8080
    metrics_port: int = 8081
    bind_address: str = "0.0.0.0"
    replan_interval: float = 300.0
    max_migrations: int = 8
    milp_time_limit: float = 10.0
    replan_deadline: float = 20.0
    default_profiles: bool = True
    api_concurrency: int = 8
    max_handlers: int = 100
    log_level: str = "INFO"
    namespace: str | None = None
    """The operator's own namespace (the agents' token Secret lives there); see
    :func:`operator_namespace` for the fallbacks."""
    agent_tokens_secret: str = "conspirator-agent-tokens"
    """The aggregate Secret of every job's token for the DPU agents ('': none)."""
    token_resync_interval: float = 60.0
    """Seconds between checks that every job's token Secret exists (0: at start only)."""
    observe_interval: float = 15.0
    """Seconds between scrapes of the DPU agents' load (0: never; no autoscaling)."""
    agent_metrics_port: int = 9403
    """Port of the DPU agents' /metrics endpoint (the chart's dpuAgent.metricsPort)."""


DEFAULT_NAMESPACE = "conspirator-system"
SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def operator_namespace(settings: Settings, env: Mapping[str, str],
                       serviceaccount_file: Path = SERVICEACCOUNT_NAMESPACE) -> str:
    """The operator's namespace: ``--operator-namespace``/``CONSPIRATOR_NAMESPACE``, else
    ``POD_NAMESPACE``, else the in-cluster service account's namespace file, else
    ``conspirator-system``."""
    if settings.namespace:
        return settings.namespace
    pod = env.get("POD_NAMESPACE", "").strip()
    if pod:
        return pod
    try:
        text = serviceaccount_file.read_text().strip()
    except OSError:
        text = ""
    return text or DEFAULT_NAMESPACE


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _int_at_least(low: int) -> Callable[[str], int]:
    def conv(text: str) -> int:
        v = int(text)
        if v < low:
            raise ValueError(f"expected an integer >= {low}, got {text!r}")
        return v
    return conv


def _port(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 65535:
        raise ValueError(f"expected a port number 0-65535, got {text!r}")
    return v


def _float_at_least(low: float, strict: bool = False) -> Callable[[str], float]:
    def conv(text: str) -> float:
        v = float(text)
        if v < low or (strict and v == low):
            raise ValueError(f"expected a number {'>' if strict else '>='} {low:g}, "
                             f"got {text!r}")
        return v
    return conv


def _namespaces(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _dns_label(text: str) -> str:
    if len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        raise ValueError(f"expected a namespace name (DNS label), got {text!r}")
    return text


def _secret_name(text: str) -> str:
    """A Secret name (DNS subdomain), or '' for none."""
    if text and (len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text)):
        raise ValueError(f"expected a Secret name (DNS subdomain) or '', got {text!r}")
    return text


def _level(text: str) -> str:
    up = text.upper()
    if up not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return up


@dataclass(frozen=True, slots=True)
class Option:
    field: str
    conv: Callable[[str], Any]
    help: str
    kind: str = "value"  # value | flag | toggle | list
    flag_name: str | None = None
    """The flag, when not derived from the field (``--namespace`` is the list of served
    namespaces, so the operator's own is ``--operator-namespace``)."""
    empty: bool = False
    """An empty environment variable is a value (not "unset")."""

    @property
    def flag(self) -> str:
        if self.flag_name:
            return self.flag_name
        return "--" + self.field.replace("_", "-").removesuffix("s") \
            if self.kind == "list" else "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "CONSPIRATOR_" + self.field.upper()


OPTIONS: tuple[Option, ...] = (
    Option("kubeconfig", str, "kubeconfig file (default: in-cluster config, else $KUBECONFIG "
                              "or ~/.kube/config)"),
    Option("namespaces", _namespaces, "serve the InferenceJobs of this namespace (repeat the "
                                      "flag; the variable takes a comma-separated list; "
                                      "default: every namespace)", kind="list"),
    Option("peering", str, "name of the kopf peering object shared by the replicas"),
    Option("standalone", _bool, "run without peering (one replica only)", kind="flag"),
    Option("priority", int, "peering priority; the highest live one is active (default: "
                            "the earlier started replica, so a running leader stays)"),
    Option("peering_lifetime", _int_at_least(1), "seconds after which a silent peer counts as "
                                                 "dead, so a standby takes over"),
    Option("liveness_port", _port, "port of the /healthz liveness endpoint (0: none)"),
    Option("metrics_port", _port, "port of the Prometheus /metrics endpoint (0: none)"),
    Option("bind_address", str, "address both endpoints listen on"),
    Option("replan_interval", _float_at_least(0.0), "seconds between global re-plans "
                                                    "(0: never)"),
    Option("max_migrations", _int_at_least(0), "most replicas one global re-plan may move "
                                               "over all jobs"),
    Option("milp_time_limit", _float_at_least(0.0, strict=True),
           "time limit of the exact MILP in a re-plan, seconds"),
    Option("replan_deadline", _float_at_least(0.0, strict=True),
           "seconds after which a global re-plan starts no new pool (the others keep "
           "their plan)"),
    Option("default_profiles", _bool, "plan models that have no ModelProfile with the "
                                      "engine's built-in default throughputs", kind="toggle"),
    Option("api_concurrency", _int_at_least(1), "parallel writes to the API server"),
    Option("max_handlers", _int_at_least(1), "objects whose events kopf handles at once, per "
                                             "kind (bounds memory in bursts)"),
    Option("log_level", _level, "DEBUG, INFO, WARNING or ERROR"),
    Option("namespace", _dns_label, "the operator's own namespace, where the agents' token "
                                    "Secret lives (default: $POD_NAMESPACE, else the "
                                    "service account's namespace, else conspirator-system)",
           flag_name="--operator-namespace"),
    Option("agent_tokens_secret", _secret_name,
           "Secret in the operator's namespace holding every job's token, one key "
           "<namespace>.<job> each, mounted by the DPU agents ('': none)", empty=True),
    Option("token_resync_interval", _float_at_least(0.0),
           "seconds between checks that every job's token Secret exists, recreating "
           "deleted ones (0: at start only)"),
    Option("observe_interval", _float_at_least(0.0),
           "seconds between scrapes of the DPU agents' metrics: observed load, autoscaling "
           "and learned profiles (0: never)"),
    Option("agent_metrics_port", _port, "port of the DPU agents' /metrics endpoint, on "
                                        "the host of GPUNode.status.dpu.agentEndpoint"),
)


def _argtype(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return conv(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags stay ``None`` so the environment can fill them."""
    defaults = Settings()
    for o in OPTIONS:
        default = getattr(defaults, o.field)
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = f"{o.help} [env {o.env}; default: {shown if shown not in ('', None) else '-'}]"
        text = text.replace("%", "%%")
        if o.kind == "flag":
            p.add_argument(o.flag, dest=o.field, action="store_true", default=None, help=text)
        elif o.kind == "toggle":
            p.add_argument(o.flag, dest=o.field, action=argparse.BooleanOptionalAction,
                           default=None, help=text)
        elif o.kind == "list":
            p.add_argument(o.flag, dest=o.field, action="append", default=None, help=text,
                           metavar=o.flag.removeprefix("--").upper())
        else:
            p.add_argument(o.flag, dest=o.field, type=_argtype(o.conv), default=None,
                           help=text, metavar=o.field.upper())


def resolve(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from parsed flags, then ``env``, then the defaults.

    Raises :class:`SettingsError` naming the variable for a bad environment value.
    """
    values: dict[str, Any] = {}
    for o in OPTIONS:
        given = getattr(args, o.field, None)
        if given is not None:
            values[o.field] = tuple(given) if o.kind == "list" else given
            continue
        raw = env.get(o.env)
        if raw is None or (raw == "" and not o.empty):
            continue
        try:
            values[o.field] = o.conv(raw)
        except ValueError as e:
            raise SettingsError(f"environment variable {o.env}: {e}") from e
    return dataclasses.replace(Settings(), **values)
