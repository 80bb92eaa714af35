"""Fixtures of the node-daemon tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conspirator.deviceplugin.nvml import NvmlBackend
from conspirator.deviceplugin.simulated import NodeSpec, SimulatedBackend

from .fakenvml import FakeNvml
from .kubelet import TestKubelet


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kubelet(sockdir: Path) -> Iterator[TestKubelet]:
    k = TestKubelet(sockdir / "device-plugins").start()
    yield k
    k.stop()


def make_backend(tmp: Path, gpus: list[dict[str, object]], **extra: object) -> SimulatedBackend:
    spec = NodeSpec.from_dict({"node": "test-node", "gpus": gpus, **extra})
    return SimulatedBackend(spec, tmp / "gpus.state.json")


@pytest.fixture
def a100x2(tmp_path: Path) -> SimulatedBackend:
    return make_backend(tmp_path, [{"model": "A100-80GB", "count": 2}])


@pytest.fixture
def fake_nvml(tmp_path: Path) -> FakeNvml:
    """The fake libnvidia-ml, reset to native/fakenvml/devices.json (not NVML: docs/nvml.md)."""
    fake = FakeNvml(tmp_path)
    fake.load()
    return fake


@pytest.fixture
def nvml(fake_nvml: FakeNvml) -> Iterator[NvmlBackend]:
    """The NVML backend, through the real nvidia-ml-py, on the fake's default GPUs."""
    backend = NvmlBackend()
    yield backend
    backend.close()
