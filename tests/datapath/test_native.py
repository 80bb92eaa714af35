"""The C module and the pure-Python fallback behave the same (ring, copy, doorbells),
and interoperate across processes on one shared ring."""

from __future__ import annotations

import mmap
import os
import platform
import struct
import subprocess
import sys

import pytest

from conspirator.wire import native
from conspirator.wire.native import Impl

IMPLS = native.implementations()


def test_the_c_module_was_built() -> None:
    # The package build compiles native/ (setup.py); only a machine without a compiler
    # falls back.  Here there is one, so a missing module is a build regression.
    assert native.C_MODULE is not None, "conspirator._native was not built"
    assert native.impl.IMPLEMENTATION == "c" or os.environ.get("CONSPIRATOR_NATIVE") == "0"


@pytest.fixture(params=IMPLS, ids=lambda m: m.IMPLEMENTATION)
def nat(request: pytest.FixtureRequest) -> Impl:
    m: Impl = request.param
    return m


def shared(size: int = 1 << 16) -> mmap.mmap:
    return mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def test_push_pop_fifo_full_and_wraparound(nat: Impl) -> None:
    buf = shared()
    r = nat.Ring(buf, 64, 4)
    assert r.capacity == 4 and r.pop() is None and r.pending() == 0
    for rnd in range(10):  # wraps the indices many times
        for i in range(4):
            assert r.push(rnd * 10 + i, i, 100 + i, 1, 2)
        assert not r.push(99, 0, 0)
        assert r.pending() == 4
        assert r.pop() == (rnd * 10, 0, 100, 1, 2)
        assert r.pop_many(10) == [(rnd * 10 + i, i, 100 + i, 1, 2) for i in (1, 2, 3)]
        assert r.pop() is None
    r.close()
    with pytest.raises(ValueError):
        r.pop()


def test_field_ranges(nat: Impl) -> None:
    r = nat.Ring(shared(), 0, 8)
    assert r.push(2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    assert r.pop() == (2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    for args in ((-1, 0, 0), (2**64, 0, 0), (0, 2**32, 0), (0, 0, -5)):
        with pytest.raises(OverflowError):
            r.push(*args)


@pytest.mark.parametrize(("base", "cap"), [(3, 4), (0, 3), (0, 0), (-8, 4), (0, 1 << 21),
                                           (1 << 16, 4)])
def test_bad_geometry(nat: Impl, base: int, cap: int) -> None:
    with pytest.raises(ValueError):
        nat.Ring(shared(), base, cap)


def test_read_only_buffer_refused(nat: Impl) -> None:
    with pytest.raises((BufferError, TypeError)):
        nat.Ring(bytes(4096), 0, 4)


def test_corrupted_indices_raise(nat: Impl) -> None:
    buf = shared()
    r = nat.Ring(buf, 0, 4)
    struct.pack_into("=Q", buf, 0, 1000)  # head far beyond tail + capacity
    with pytest.raises(nat.RingCorrupted):
        r.pop()
    with pytest.raises(nat.RingCorrupted):
        r.push(1, 0, 0)
    with pytest.raises(nat.RingCorrupted):
        r.pending()


def test_copy_bounds(nat: Impl) -> None:
    dst = bytearray(16)
    src = bytes(range(16))
    assert nat.copy(dst, 4, src, 2, 8) == 8
    assert dst[4:12] == src[2:10]
    big = shared(1 << 20)
    payload = os.urandom(1 << 20)
    assert nat.copy(big, 0, payload, 0, len(payload)) == len(payload)
    assert big[:] == payload
    for args in ((dst, 10, src, 0, 8), (dst, 0, src, 10, 8), (dst, -1, src, 0, 1),
                 (dst, 0, src, 0, -1), (dst, 0, src, 0, 17)):
        with pytest.raises(ValueError):
            nat.copy(*args)
    with pytest.raises((BufferError, TypeError)):
        nat.copy(b"readonly", 0, src, 0, 1)


def test_submit_copies_then_pushes_and_a_full_ring_copies_nothing(nat: Impl) -> None:
    ctl = shared()
    r = nat.Ring(ctl, 0, 2)
    dst = shared(1 << 20)
    src = os.urandom(1 << 20)
    took = r.submit(dst, 4096, src, 100, 5000, 7, 1)
    assert took >= 0
    assert dst[4096:4096 + 5000] == src[100:5100]
    assert r.submit(dst, 0, src, 0, 0, 8, 0) >= 0  # an empty request copies nothing
    dst[:16] = bytes(16)
    assert r.submit(dst, 0, src, 0, 16, 9, 0) == -1  # full: nothing copied, nothing pushed
    assert dst[:16] == bytes(16)
    assert r.pop_many(8) == [(7, 1, 5000, 0, 0), (8, 0, 0, 0, 0)]
    for args in ((dst, len(dst) - 4, src, 0, 8, 1, 0), (dst, 0, src, -1, 8, 1, 0),
                 (dst, 0, src, 0, -1, 1, 0)):
        with pytest.raises(ValueError):
            r.submit(*args)
    with pytest.raises(OverflowError):
        r.submit(dst, 0, src, 0, 8, -1, 0)
    with pytest.raises(OverflowError):
        r.submit(dst, 0, src, 0, 8, 1, 1 << 32)
    assert r.pending() == 0  # refused submissions pushed nothing
    with pytest.raises((BufferError, TypeError)):
        r.submit(b"readonly", 0, src, 0, 1, 1, 0)
    r.close()
    with pytest.raises(ValueError):
        r.submit(dst, 0, src, 0, 8, 1, 0)


def test_doorbell(nat: Impl) -> None:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        assert nat.doorbell_wait(fd, 10) == 0
        nat.doorbell_ring(fd)
        nat.doorbell_ring(fd)
        assert nat.doorbell_wait(fd, 1000) == 2
        assert nat.doorbell_wait(fd, 0) == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("producer", IMPLS, ids=lambda m: f"producer-{m.IMPLEMENTATION}")
@pytest.mark.parametrize("consumer", IMPLS, ids=lambda m: f"consumer-{m.IMPLEMENTATION}")
def test_cross_process_interop(producer: Impl, consumer: Impl) -> None:
    """A child pushes 20,000 entries through an 8-entry ring into the parent, each
    implementation on either side, with the eventfd doorbell waking the consumer."""
    buf = shared()
    bell = os.eventfd(0, os.EFD_NONBLOCK)
    space = os.eventfd(0, os.EFD_NONBLOCK)
    n = 20_000
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            r = producer.Ring(buf, 128, 8)
            for i in range(1, n + 1):
                while not r.push(i, i % 8, i * 3, 0, i & 0xFFFF):
                    producer.doorbell_wait(space, 50)
                producer.doorbell_ring(bell)
            os._exit(0)
        except BaseException:
            os._exit(1)
    try:
        r = consumer.Ring(buf, 128, 8)
        got = 0
        while got < n:
            entries = r.pop_many(8)
            if not entries:
                consumer.doorbell_wait(bell, 1000)
                continue
            for tag, slot, length, status, aux in entries:
                got += 1
                assert (tag, slot, length, status, aux) == (got, got % 8, got * 3, 0,
                                                            got & 0xFFFF)
            consumer.doorbell_ring(space)
        assert r.pop() is None
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(bell)
        os.close(space)
    assert status == 0


@pytest.mark.parametrize("n", [(512 << 10) - 1, 512 << 10, (1 << 20) + 3, 3 << 20])
def test_large_copies_and_overlap(nat: Impl, n: int) -> None:
    # From 512 KiB the C copy engine may use `rep movsb`; the bytes must be the same as
    # memmove's, including for overlapping ranges in one buffer (both directions).
    assert nat.LARGE_COPY in ("rep-movsb", "memmove")
    _check_large_copy(nat, n)


def _check_large_copy(nat: Impl, n: int) -> None:
    payload = os.urandom(n + 8192)
    buf = shared(2 * n + (1 << 16))
    assert nat.copy(buf, 4096 + 1, payload, 5, n) == n
    assert buf[4097:4097 + n] == payload[5:5 + n]
    expect = bytearray(buf[:])
    expect[4096 + 100:4096 + 100 + n] = expect[4097:4097 + n]  # forward overlap
    nat.copy(buf, 4096 + 100, buf, 4097, n)
    assert buf[:] == expect
    expect[4000:4000 + n] = expect[4096 + 100:4096 + 100 + n]  # backward overlap
    nat.copy(buf, 4000, buf, 4096 + 100, n)
    assert buf[:] == expect


@pytest.mark.skipif(native.C_MODULE is None, reason="needs the C module")
@pytest.mark.parametrize("setting", [None, "rep-movsb", "memmove"])
def test_large_copy_engine_choice(setting: str | None) -> None:
    # `rep movsb` is the C engine's default for large copies where the CPU has ERMS;
    # CONSPIRATOR_COPY=memmove turns it off.  The same checks run on the path chosen, in a
    # fresh interpreter.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_native as t; "
            "from conspirator.wire import native; "
            "print(native.C_MODULE.LARGE_COPY); "
            "[t._check_large_copy(native.C_MODULE, n) for n in (512 << 10, (1 << 20) + 3)]")
    env = {k: v for k, v in os.environ.items() if k != "CONSPIRATOR_COPY"}
    if setting is not None:
        env["CONSPIRATOR_COPY"] = setting
    r = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)],
                       env=env, capture_output=True, text=True, timeout=60, check=True)
    with open("/proc/cpuinfo") as f:
        erms = "erms" in f.read().split()
    movsb = erms and platform.machine() == "x86_64" and setting != "memmove"
    assert r.stdout.split()[0] == ("rep-movsb" if movsb else "memmove")
