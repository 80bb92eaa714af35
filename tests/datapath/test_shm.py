"""Shared-memory layout, memfd seals, and the registration messages."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from conspirator.wire.frames import (
    REGISTRY_REPLIES,
    WORKER_TO_REGISTRY,
    ErrorCode,
    MsgType,
    ProtocolError,
    encode,
)
from conspirator.wire.registration import (
    BufferSpec,
    Publication,
    parse_json,
    recv_packet,
    register_frame,
    send_frame,
)
from conspirator.wire.shm import (
    PAGE,
    ControlBlock,
    DataBuffer,
    Geometry,
    LayoutError,
    WorkerState,
    check_memfd,
    new_memfd,
)


def test_geometry_is_aligned_and_disjoint() -> None:
    for slots, slot_bytes, result in ((1, 1, 0), (4, 4096, 64), (7, 1000, 4097), (64, 3, 1)):
        g = Geometry(slots, slot_bytes, result)
        assert g.capacity >= 2 * slots and g.capacity & (g.capacity - 1) == 0
        assert g.sq_offset >= 128 + 8 * slots and g.sq_offset % 64 == 0
        assert g.cq_offset == g.sq_offset + 128 + 32 * g.capacity
        assert g.results_offset % PAGE == 0
        assert g.results_offset >= g.cq_offset + 128 + 32 * g.capacity
        assert g.control_bytes >= g.results_offset + slots * result
        assert g.slot_stride % PAGE == 0 and g.data_bytes == slots * g.slot_stride


def test_memfds_are_sealed() -> None:
    fd = new_memfd("t", 8192)
    try:
        check_memfd(fd, 8192, "t")
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 4096)
        with pytest.raises(LayoutError, match="needs"):
            check_memfd(fd, 8193, "t")
    finally:
        os.close(fd)
    plain = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(plain, 8192)
    try:
        with pytest.raises(LayoutError, match="not sealed"):
            check_memfd(plain, 4096, "x")
        fcntl.fcntl(plain, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)
        with pytest.raises(LayoutError, match="not sealed"):
            check_memfd(plain, 4096, "x")
    finally:
        os.close(plain)
    r, w = os.pipe()
    try:
        with pytest.raises(LayoutError, match="memfd"):
            check_memfd(r, 1, "pipe")
    finally:
        os.close(r)
        os.close(w)


def test_control_block_attach_checks_geometry() -> None:
    g = Geometry(4, 4096, 256)
    fd = new_memfd("ctl", g.control_bytes)
    try:
        worker = ControlBlock(fd, g, create=True)
        worker.state = WorkerState.READY
        agent = ControlBlock(fd, g, create=False)
        assert agent.state is WorkerState.READY
        assert agent.sq.push(7, 1, 100)
        assert worker.sq.pop() == (7, 1, 100, 0, 0)
        agent.tags[2] = 99
        assert worker.tags[2] == 99
        with pytest.raises(LayoutError, match="geometry"):
            ControlBlock(fd, Geometry(4, 4096, 128), create=False)
        with pytest.raises(LayoutError):
            ControlBlock(fd, Geometry(64, 4096, 256), create=False)  # bigger than the memfd
        view = agent.result_view(3, 256)
        assert len(view) == 256
        view.release()
        with pytest.raises(LayoutError):
            agent.result_view(4, 1)
        with pytest.raises(LayoutError):
            agent.result_view(0, 257)
        agent.close()
        worker.close()
    finally:
        os.close(fd)


def test_control_block_refuses_garbage() -> None:
    g = Geometry(2, 64, 64)
    fd = new_memfd("garbage", g.control_bytes)
    try:
        with pytest.raises(LayoutError, match="magic"):
            ControlBlock(fd, g, create=False)
    finally:
        os.close(fd)


def test_data_buffer_views() -> None:
    g = Geometry(3, 5000, 0)
    fd = new_memfd("data", g.data_bytes)
    try:
        a = DataBuffer(fd, g, create=True)
        b = DataBuffer(fd, g, create=False)
        v = a.view(2)
        v[:5] = b"hello"
        w = b.view(2, 5)
        assert bytes(w) == b"hello"
        v.release()
        w.release()
        with pytest.raises(LayoutError):
            a.view(3)
        with pytest.raises(LayoutError):
            a.view(0, 5001)
        a.close()
        b.close()
    finally:
        os.close(fd)


SPEC = {"job": "team-a/echo", "replica": "pod-1", "slots": 4, "slot_bytes": 4096,
        "result_bytes": 64}


def test_buffer_spec_validation() -> None:
    s = BufferSpec.from_dict(SPEC)
    assert s.nfds == 4 and BufferSpec.from_dict(s.to_dict()) == s
    p = Publication(5, s, node="n1")
    assert Publication.from_dict(p.to_dict()) == p
    for bad in ({"job": "nope"}, {"slots": 0}, {"slots": 1025}, {"slot_bytes": True},
                {"slot_bytes": "1"}, {"result_bytes": -1}, {"target": "gpu"},
                {"weight": 0}, {"weight": float("inf")}, {"dtype": "object"},
                {"shape": [1, -2]}, {"shape": [True]}, {"target": "cuda-ipc"},
                {"target": "cuda-ipc", "cuda_ipc_handle": "zz" * 64}):
        with pytest.raises(ProtocolError):
            BufferSpec.from_dict({**SPEC, **bad})
    with pytest.raises(ProtocolError):
        BufferSpec.from_dict({k: v for k, v in SPEC.items() if k != "slots"})
    for body in (b"", b"[]", b"{", b"nan", b"[" * 100000):
        with pytest.raises(ProtocolError):
            parse_json(body)
    with pytest.raises(ProtocolError):
        Publication.from_dict({"buffer_id": 0, "spec": SPEC})


def test_seqpacket_frames_carry_their_descriptors() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = [os.eventfd(0) for _ in range(4)]
    try:
        send_frame(a, register_frame(BufferSpec.from_dict(SPEC), 3), fds)
        send_frame(a, encode(MsgType.PING, b"", 4))
        frame, got = recv_packet(b, WORKER_TO_REGISTRY)
        assert frame.type is MsgType.REGISTER and frame.header.request_id == 3
        assert len(got) == 4 and all(os.readlink(f"/proc/self/fd/{fd}") ==
                                     "anon_inode:[eventfd]" for fd in got)
        for fd in got:
            os.close(fd)
        frame, got = recv_packet(b, WORKER_TO_REGISTRY)
        assert frame.type is MsgType.PING and got == []
        # two frames in one packet, a wrong type, five descriptors: all refused, fds closed
        for payload, nfds, allowed in (
                (encode(MsgType.PING) + encode(MsgType.PING), 0, WORKER_TO_REGISTRY),
                (encode(MsgType.PING), 0, REGISTRY_REPLIES),
                (encode(MsgType.PING), 5, WORKER_TO_REGISTRY)):
            extra = [os.eventfd(0) for _ in range(nfds)]
            send_frame(a, payload, extra)
            for fd in extra:
                os.close(fd)
            before = len(os.listdir("/proc/self/fd"))
            with pytest.raises(ProtocolError) as e:
                recv_packet(b, allowed)
            assert e.value.code is ErrorCode.BAD_FRAME
            assert len(os.listdir("/proc/self/fd")) <= before
        a.close()
        with pytest.raises(ConnectionError):
            recv_packet(b, WORKER_TO_REGISTRY)
    finally:
        for fd in fds:
            os.close(fd)
        a.close()
        b.close()
