"""RC queue pairs through pyverbs (rdma-core's Python binding; Debian ``python3-pyverbs``).

Used on both ends of the RDMA transport: the agent registers its staging region as a
memory region with remote-write access and hands the client its address and rkey; the
client RDMA-WRITEs a request into a staging slot, waits for the write's completion (on an
RC queue pair the data is then placed), and sends a STAGED frame over the TCP control
connection.  The queue-pair settings are those of ``ibv_rc_pingpong``.

pyverbs is imported when first used, so this module loads (and :func:`available` answers)
where rdma-core is absent.  The calls were checked against Debian bookworm's
``python3-pyverbs`` 44.0 (a virtualenv needs ``--system-site-packages`` to see it); they
have not run against a device here (none exists on the development machines).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import secrets
from typing import Any

from conspirator.wire.frames import RdmaInfo

SEND_DEPTH = 64


class RdmaUnavailableError(RuntimeError):
    pass


def _pyverbs() -> dict[str, Any]:
    try:
        return {m: importlib.import_module(f"pyverbs.{m}")
                for m in ("device", "enums", "pd", "cq", "mr", "qp", "addr", "wr")}
    except ImportError as e:
        raise RdmaUnavailableError(f"pyverbs is not installed ({e}); apt install python3-pyverbs"
                              ) from None


def why_unavailable() -> str | None:
    """None when RDMA can be used here, else why not."""
    if not os.path.isdir("/dev/infiniband"):
        return "no /dev/infiniband (no RDMA device on this machine)"
    try:
        pv = _pyverbs()
    except RdmaUnavailableError as e:
        return str(e)
    try:
        devices = pv["device"].get_device_list()
    except Exception as e:  # pyverbs raises PyverbsRDMAError when there is none
        return f"pyverbs lists no RDMA device ({e})"
    if not devices:
        return "pyverbs lists no RDMA device"
    return None


def available() -> bool:
    return why_unavailable() is None


def gid_bytes(gid: Any) -> bytes:
    return bytes.fromhex(str(gid.gid).replace(":", ""))


def gid_string(raw: bytes) -> str:
    h = raw.hex()
    return ":".join(h[i:i + 4] for i in range(0, 32, 4))


class RcEndpoint:
    """One RC queue pair with one registered region of ``region_bytes``."""

    def __init__(self, device: str | None, region_bytes: int, *, remote_write: bool,
                 port: int = 1, gid_index: int = 0) -> None:
        pv = self.pv = _pyverbs()
        e = pv["enums"]
        names = [d.name.decode() for d in pv["device"].get_device_list()]
        if not names:
            raise RdmaUnavailableError("no RDMA device")
        self.port = port
        self.gid_index = gid_index
        self.ctx = pv["device"].Context(name=device or names[0])
        self.pd = pv["pd"].PD(self.ctx)
        self.cq = pv["cq"].CQ(self.ctx, 2 * SEND_DEPTH, None, None, 0)
        access = e.IBV_ACCESS_LOCAL_WRITE
        if remote_write:
            access |= e.IBV_ACCESS_REMOTE_WRITE
        self.mr = pv["mr"].MR(self.pd, region_bytes, access)
        self.region_bytes = region_bytes
        cap = pv["qp"].QPCap(max_send_wr=SEND_DEPTH, max_recv_wr=1, max_send_sge=1,
                             max_recv_sge=1)
        init = pv["qp"].QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap)
        self.qp = pv["qp"].QP(self.pd, init, pv["qp"].QPAttr(port_num=port))
        self.port_attr = self.ctx.query_port(port)
        self.gid = self.ctx.query_gid(port, gid_index)
        self.psn = secrets.randbits(24)

    def info(self) -> RdmaInfo:
        return RdmaInfo(qpn=self.qp.qp_num, psn=self.psn, lid=self.port_attr.lid,
                        gid=gid_bytes(self.gid), addr=self.mr.buf, rkey=self.mr.rkey,
                        region_bytes=self.region_bytes)

    def connect(self, remote: RdmaInfo) -> None:
        pv, e = self.pv, self.pv["enums"]
        attr = pv["qp"].QPAttr(port_num=self.port)
        attr.dest_qp_num = remote.qpn
        attr.path_mtu = e.IBV_MTU_1024
        attr.max_dest_rd_atomic = 1
        attr.min_rnr_timer = 12
        attr.rq_psn = remote.psn
        attr.sq_psn = self.psn
        attr.timeout = 14
        attr.retry_cnt = 7
        attr.rnr_retry = 7
        attr.max_rd_atomic = 1
        gr = pv["addr"].GlobalRoute(dgid=pv["addr"].GID(gid_string(remote.gid)),
                                    sgid_index=self.gid_index)
        attr.ah_attr = pv["addr"].AHAttr(port_num=self.port, is_global=1, gr=gr,
                                         dlid=remote.lid)
        self.qp.to_rts(attr)

    def region(self) -> Any:
        """The registered region as a writable buffer (no copy)."""
        return (ctypes.c_char * self.region_bytes).from_address(self.mr.buf)

    def write(self, local_off: int, remote_addr: int, rkey: int, n: int) -> None:
        """RDMA WRITE ``n`` bytes of the region at ``local_off`` to the peer; returns when
        the write completed."""
        pv, e = self.pv, self.pv["enums"]
        sge = pv["wr"].SGE(self.mr.buf + local_off, n, self.mr.lkey)
        wr = pv["wr"].SendWR(opcode=e.IBV_WR_RDMA_WRITE, num_sge=1, sg=[sge],
                             send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey, remote_addr)
        self.qp.post_send(wr)
        while True:
            npolled, wcs = self.cq.poll()
            if npolled:
                if wcs[0].status != e.IBV_WC_SUCCESS:
                    raise OSError(f"RDMA WRITE failed: work completion status {wcs[0].status}")
                return

    def close(self) -> None:
        for obj in (self.qp, self.mr, self.cq, self.pd, self.ctx):
            with contextlib.suppress(Exception):  # pyverbs raises its own error types
                obj.close()
