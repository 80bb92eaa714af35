"""``make gpu-check``: read-only NVML queries on this machine's GPUs against the MIG catalog.

For every GPU NVML reports: its product name, memory and MIG mode (current and pending),
the catalog model it maps to; where MIG is on, NVML's GPU-instance profiles and possible
placements beside ``conspirator.mig``'s, and the instances that exist (a valid layout by the
catalog's rules?).  Then, where ``libcuda`` is present, a CUDA smoke test: every device CUDA
can target gets a context and a 1 MiB allocation written and read back.

It only reads.  It never changes MIG mode, layouts, clocks, power limits or any other
setting (DESIGN section 7): it calls :class:`~conspirator.deviceplugin.nvml.NvmlBackend`'s
query methods (``gpus``, ``profiles``, ``possible_placements``, ``instances``) and nothing
else; tests run it on the fake libnvidia-ml and check that it made no mutating call.

Exit status: 0 when NVML agrees with the catalog, 1 when it does not, 77 (skipped) when
this machine has no NVML.  A run on the fake NVML (``make gpu-check-fake``) proves this code
path and the calls it makes, not anything about real GPUs.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from collections.abc import Callable
from typing import Any

from conspirator.deviceplugin.backend import BackendError
from conspirator.deviceplugin.nvml import NvmlBackend
from conspirator.mig import MigLayoutError, Placement, catalog, check_layout

SKIPPED = 77


class Report:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.failures = 0

    def line(self, text: str) -> None:
        self.out(text)

    def fail(self, text: str) -> None:
        self.failures += 1
        self.out(f"  FAIL {text}")


def check_gpus(backend: NvmlBackend, report: Report) -> None:
    """NVML's view of every GPU beside the catalog (queries only)."""
    gpus = backend.gpus()
    report.line(f"NVML: {len(gpus)} GPU(s)")
    for g in gpus:
        known = g.model.name in catalog()
        pending = "" if g.mig_pending is None else f" (pending after reset: {g.mig_pending})"
        report.line(f"GPU {g.index}: {g.uuid} model {g.model.name}"
                    f"{'' if known else ' (not in the catalog)'}, {g.memory_gib} GiB, "
                    f"MIG {'capable' if g.mig_capable else 'not capable'}, "
                    f"{'enabled' if g.mig_enabled else 'disabled'}{pending}")
        if not g.mig_capable:
            continue
        if not g.mig_enabled:
            report.line("  MIG mode is off: NVML lists no profiles; not checked "
                        "(this check never enables it)")
            continue
        nv = backend.profiles(g.index)
        for prof in g.model.profiles:
            got = nv.get(prof.name)
            if got is None:
                report.fail(f"{prof.name}: in the catalog, not offered by NVML")
                continue
            starts = backend.possible_placements(g.index, prof.name)
            shape = (got.compute_slices, got.memory_slices)
            if shape != (prof.compute_slices, prof.memory_slices):
                report.fail(f"{prof.name}: NVML has {shape[0]} compute / {shape[1]} memory "
                            f"slices, the catalog {prof.compute_slices} / {prof.memory_slices}")
            elif starts != list(prof.starts):
                report.fail(f"{prof.name}: NVML places it at {starts}, the catalog at "
                            f"{list(prof.starts)}")
            else:
                report.line(f"  ok {prof.name} (NVML id {got.nvml_id}) at {starts}")
        for name in sorted(set(nv) - {p.name for p in g.model.profiles}):
            report.line(f"  note {name}: offered by NVML, not in the catalog (not planned with)")
        insts = backend.instances(g.index)
        layout = ", ".join(f"{i.profile}@{i.start}{'' if i.complete else ' (no CI)'}"
                           for i in insts) or "none"
        report.line(f"  instances: {layout}")
        try:
            check_layout(g.model, [Placement(g.model.profile(i.profile), i.start)
                                   for i in insts])
        except (KeyError, MigLayoutError) as exc:
            report.fail(f"the existing layout breaks the catalog's rules: {exc}")


def _cuda_call(cuda: Any, name: str, *args: Any) -> None:
    rc = int(getattr(cuda, name)(*args))
    if rc != 0:
        raise RuntimeError(f"{name} returned CUDA error {rc}")


def check_cuda(report: Report) -> None:
    """Every device CUDA can target: a context, 1 MiB written and read back.  Skipped
    without libcuda."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        report.line("CUDA: libcuda.so.1 not present; smoke test skipped")
        return
    try:
        _cuda_call(cuda, "cuInit", 0)
        n = ctypes.c_int(0)
        _cuda_call(cuda, "cuDeviceGetCount", ctypes.byref(n))
        report.line(f"CUDA: {n.value} device(s)")
        size = 1 << 20
        for i in range(n.value):
            dev, ctx, ptr = ctypes.c_int(0), ctypes.c_void_p(), ctypes.c_uint64(0)
            name = ctypes.create_string_buffer(256)
            _cuda_call(cuda, "cuDeviceGet", ctypes.byref(dev), i)
            _cuda_call(cuda, "cuDeviceGetName", name, len(name), dev)
            _cuda_call(cuda, "cuCtxCreate_v2", ctypes.byref(ctx), 0, dev)
            try:
                _cuda_call(cuda, "cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(size))
                _cuda_call(cuda, "cuMemsetD8_v2", ptr, ctypes.c_ubyte(0x5A),
                           ctypes.c_size_t(size))
                host = (ctypes.c_ubyte * size)()
                _cuda_call(cuda, "cuMemcpyDtoH_v2", host, ptr, ctypes.c_size_t(size))
                _cuda_call(cuda, "cuMemFree_v2", ptr)
                if any(b != 0x5A for b in bytes(host)):
                    report.fail(f"CUDA device {i}: memory read back differs")
                else:
                    report.line(f"  ok CUDA device {i} {name.value.decode()}: "
                                "1 MiB written and read back")
            finally:
                cuda.cuCtxDestroy_v2(ctx)
    except (RuntimeError, AttributeError) as exc:
        report.fail(f"CUDA: {exc}")


def run(out: Callable[[str], None] = print, expect_fake: bool = False) -> int:
    report = Report(out)
    try:
        backend = NvmlBackend()
    except BackendError as exc:
        out(f"gpu-check: SKIPPED: no NVML on this machine ({exc.message}); nothing was checked")
        return SKIPPED
    try:
        import pynvml

        fake = hasattr(pynvml.nvmlLib, "fakenvml_mutations")
        before = int(pynvml.nvmlLib.fakenvml_mutations()) if fake else 0
        if fake:
            out("NVML is the FAKE libnvidia-ml (native/fakenvml): this run proves the code "
                "path and its calls, not hardware")
        elif expect_fake:
            out("gpu-check: --expect-fake, but the NVML loaded is not the fake")
            return 1
        check_gpus(backend, report)
        if fake and int(pynvml.nvmlLib.fakenvml_mutations()) != before:
            report.fail("a mutating NVML call was made")
    except BackendError as exc:
        report.fail(f"NVML: {exc}")
    finally:
        backend.close()
    check_cuda(report)
    verdict = f"FAILED, {report.failures} mismatch(es)" if report.failures else "ok"
    out(f"gpu-check: {verdict}")
    return 1 if report.failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check",
                                description="read-only NVML check against the MIG catalog")
    p.add_argument("--expect-fake", action="store_true",
                   help="fail unless the NVML loaded is the fake libnvidia-ml "
                   "(make gpu-check-fake)")
    args = p.parse_args(argv)
    return run(expect_fake=args.expect_fake)


if __name__ == "__main__":
    sys.exit(main())
