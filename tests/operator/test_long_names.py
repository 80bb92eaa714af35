"""A job name of the longest DNS label (63 characters) still gives valid names for every
object the operator writes: the worker Deployment (and its pods' hostnames), the
ResourceClaimTemplate, the token Secret and its aggregate key, the Events, and every label
value.  The checks are Kubernetes' own (apimachinery's IsDNS1123Label/Subdomain and
IsValidLabelValue), so a name the API server would refuse fails here."""

from __future__ import annotations

import re
from typing import Any

import pytest

from conspirator.operator.datapath import (
    aggregate_key,
    secret_labels,
    token_secret,
    token_secret_name,
)
from conspirator.operator.manifests import claim_template, deployment, job_event

from .builders import job

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
GENERATED_SUFFIX = "abcde"  # the API server appends 5 characters to a generateName

# 63 characters each, with a '-' or '.' wherever a cut might land (positions 39-41, 52-54).
NAMES = [
    "j" * 63,
    "resnet50-production-tenant-a-eu-west-1-canary-v2-batch-64-fp16x",
    "a" * 39 + "-" + "b" * 23,
    "a" * 40 + "-" + "b" * 22,
    "a" * 39 + "." + "b" * 23,
    "a" * 38 + "-" + "-" + "b" * 23,
    "x-" * 31 + "y",
    "x." * 31 + "y",
]
NODES = ["kwok-a100-0", "ip-10-0-12-34.eu-west-1.compute.internal", "n" * 63]
PROFILES = ["1g.10gb", "3g.40gb", "1g.10gb+me", "whole"]


def subdomain(name: str) -> bool:
    return len(name) <= 253 and DNS1123_SUBDOMAIN.fullmatch(name) is not None


def label(name: str) -> bool:
    return len(name) <= 63 and DNS1123_LABEL.fullmatch(name) is not None


def labels_ok(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v!r}" for k, v in labels.items()
            if len(v) > 63 or LABEL_VALUE.fullmatch(v) is None]


def test_the_names_are_63_characters() -> None:
    assert {len(n) for n in NAMES} == {63} and all(subdomain(n) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_63_character_job_gives_valid_names(name: str) -> None:
    v = job(name, namespace="team-" + "t" * 58, uid="0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
    bad: list[str] = []
    for node in NODES:
        for profile in PROFILES:
            d = deployment(v, node, profile, 2)
            meta, tmpl = d["metadata"], d["spec"]["template"]
            # A pod's hostname is its name cut to 63: the Deployment name is a DNS label.
            if not label(meta["name"]):
                bad.append(f"Deployment {meta['name']!r}")
            bad += labels_ok(meta["labels"]) + labels_ok(tmpl["metadata"]["labels"])
            bad += labels_ok(d["spec"]["selector"]["matchLabels"])
            c = claim_template(v, node, profile)
            if not subdomain(c["metadata"]["name"]):
                bad.append(f"ResourceClaimTemplate {c['metadata']['name']!r}")
            bad += labels_ok(c["metadata"]["labels"])
    secret: dict[str, Any] = token_secret(v, "t0ken")
    if not subdomain(secret["metadata"]["name"]) or secret["metadata"]["name"] != \
            token_secret_name(name):
        bad.append(f"Secret {secret['metadata']['name']!r}")
    bad += labels_ok(secret["metadata"]["labels"]) + labels_ok(secret_labels(name))
    key = aggregate_key(v.namespace, name)
    if key is None or SECRET_KEY.fullmatch(key) is None:
        bad.append(f"aggregate key {key!r}")
    ev = job_event(v, "Placed", "placed")
    generated = ev["metadata"]["generateName"] + GENERATED_SUFFIX
    if not subdomain(generated):
        bad.append(f"Event {generated!r}")
    bad += labels_ok(ev["metadata"]["labels"])
    assert not bad, bad


def test_long_names_stay_apart() -> None:
    """Two 63-character jobs that share their first 40 characters get different objects."""
    a, b = "a" * 40 + "-" + "b" * 22, "a" * 40 + "-" + "c" * 22
    for node in NODES:
        assert deployment(job(a), node, "3g.40gb", 1)["metadata"]["name"] != \
            deployment(job(b), node, "3g.40gb", 1)["metadata"]["name"]
    assert token_secret_name(a) != token_secret_name(b)
