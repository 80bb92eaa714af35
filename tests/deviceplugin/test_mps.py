"""MPS control daemons per MIG instance: the bookkeeping, and the real binary where present."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conspirator.deviceplugin.mps import (
    MPS_CONTROL,
    MpsError,
    NvidiaMpsControl,
    SimulatedMpsControl,
)

UUIDS = [f"MIG-{k:08x}-0000-0000-0000-000000000000" for k in range(5)]


def test_reconcile_starts_and_stops(tmp_path: Path) -> None:
    mps = SimulatedMpsControl(tmp_path)
    assert mps.reconcile({UUIDS[0]: 3, UUIDS[1]: 1}) == ([UUIDS[0]], [])
    d = mps.running[UUIDS[0]]
    assert d.pipe_dir.is_dir() and d.log_dir.is_dir()
    assert d.client_env()["CUDA_VISIBLE_DEVICES"] == UUIDS[0]
    assert mps.reconcile({UUIDS[0]: 2, UUIDS[2]: 2}) == ([UUIDS[2]], [])
    assert mps.reconcile({UUIDS[2]: 1}) == ([], [UUIDS[0], UUIDS[2]])
    assert mps.log == [("start", UUIDS[0]), ("start", UUIDS[2]), ("stop", UUIDS[0]),
                       ("stop", UUIDS[2])]


@given(st.lists(st.dictionaries(st.sampled_from(UUIDS), st.integers(1, 5)), max_size=6))
def test_reconcile_runs_exactly_the_instances_that_need_it(
        plans: list[dict[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as root:
        mps = SimulatedMpsControl(Path(root))
        for wanted in plans:
            before = set(mps.running)
            started, stopped = mps.reconcile(wanted)
            need = {u for u, n in wanted.items() if n > 1}
            assert set(mps.running) == need
            assert set(started) == need - before and set(stopped) == before - need


def test_missing_binary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MpsError, match="not on PATH"):
        NvidiaMpsControl(tmp_path, binary="no-such-mps-control-binary")


def _mig_uuid() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if "UUID: MIG-" in line:
            return line.split("UUID: ")[1].rstrip(")")
    return None


@pytest.mark.skipif(shutil.which(MPS_CONTROL) is None,
                    reason=f"{MPS_CONTROL} not on PATH: no NVIDIA driver on this machine")
def test_real_daemon_on_a_mig_instance(tmp_path: Path) -> None:
    uuid = _mig_uuid()
    if uuid is None:
        pytest.skip("no MIG instance on this machine (nvidia-smi -L lists none)")
    mps = NvidiaMpsControl(tmp_path)
    assert mps.reconcile({uuid: 2}) == ([uuid], [])
    assert (mps.running[uuid].pipe_dir / "control").exists()
    assert mps.reconcile({}) == ([], [uuid])
