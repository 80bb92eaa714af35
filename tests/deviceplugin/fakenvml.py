"""The fake libnvidia-ml (native/fakenvml/) as the tests load it: built by ``make fakenvml``
(here too when it is missing or older than its sources), handed to the real ``nvidia-ml-py``
as its ``pynvml.nvmlLib``, and driven through its test controls (the ``fakenvml_*``
functions, which are not NVML).  What a test against it proves: the NVML calls, struct
versions and error handling of the backend; not the hardware's behaviour."""

from __future__ import annotations

import copy
import ctypes
import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "native" / "fakenvml"
LIBRARY = ROOT / "build" / "fakenvml" / "libnvidia-ml.so.1"
DEVICES = SRC / "devices.json"

_loaded: dict[str, ctypes.CDLL] = {}


def build() -> Path:
    """The library, (re)built by the Makefile's rule when stale.  Raises when it cannot be:
    a test that needs the fake fails rather than skips."""
    sources = [p for p in SRC.rglob("*") if p.is_file()]
    if not LIBRARY.exists() or any(p.stat().st_mtime > LIBRARY.stat().st_mtime for p in sources):
        subprocess.run(["make", "-s", "fakenvml"], cwd=ROOT, check=True)
    return LIBRARY


def library() -> ctypes.CDLL:
    """The fake, loaded once per process and installed as pynvml's NVML library."""
    if "lib" not in _loaded:
        import pynvml

        lib = ctypes.CDLL(str(build()))
        lib.fakenvml_load.argtypes = [ctypes.c_char_p]
        lib.fakenvml_last_error.restype = ctypes.c_char_p
        lib.fakenvml_allow_mig_mode_set.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.fakenvml_process.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_int]
        lib.fakenvml_inject_xid.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong]
        lib.fakenvml_mutations.restype = ctypes.c_ulonglong
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
        _loaded["lib"] = lib
    return _loaded["lib"]


def default_config() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEVICES.read_text())
    return doc


def config(gpus: list[dict[str, Any]], **flags: Any) -> dict[str, Any]:
    """The default device file's models with these GPUs (``{"model": ..., "migEnabled": ...}``)
    and flags (``allowMigModeSet``, ``migModeNeedsReset``)."""
    doc = copy.deepcopy(default_config())
    doc["gpus"] = gpus
    doc.update(flags)
    return doc


class FakeNvml:
    """Test controls of the loaded fake.  Not NVML: what a process or the hardware would do."""

    def __init__(self, tmp: Path) -> None:
        self.lib = library()
        self.tmp = tmp

    def load(self, doc: dict[str, Any] | None = None) -> None:
        """Reset every GPU to ``doc`` (default: native/fakenvml/devices.json)."""
        path = DEVICES
        if doc is not None:
            path = self.tmp / "fakenvml.json"
            path.write_text(json.dumps(doc))
        if self.lib.fakenvml_load(str(path).encode()) != 0:
            raise RuntimeError(self.lib.fakenvml_last_error().decode())

    def allow_mig_mode_set(self, allow: bool = True, needs_reset: bool = False) -> None:
        self.lib.fakenvml_allow_mig_mode_set(int(allow), int(needs_reset))

    def process(self, uuid: str, pid: int, running: bool = True) -> None:
        if self.lib.fakenvml_process(uuid.encode(), pid, int(running)) != 0:
            raise KeyError(uuid)

    def inject_xid(self, uuid: str, xid: int) -> int:
        """Event sets reached (0 before the backend registered for events)."""
        n = int(self.lib.fakenvml_inject_xid(uuid.encode(), xid))
        if n < 0:
            raise KeyError(uuid)
        return n

    def mutations(self) -> int:
        return int(self.lib.fakenvml_mutations())


__all__ = ["DEVICES", "LIBRARY", "FakeNvml", "build", "config", "default_config", "library"]
