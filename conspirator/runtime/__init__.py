"""The worker runtime: the one-line change of the paper, and the request loop.

::

    from conspirator import runtime

    x = runtime.input_tensor((1, 784), "float32")   # registers the buffer with the node
    runtime.serve(lambda x: model(x))                # answers requests until stopped

:func:`input_tensor` allocates the input buffer (a sealed memfd, or CUDA device memory with
``device="cuda"``), registers it with the node's buffer registry (the unix socket in
``CONSPIRATOR_REGISTRY_SOCKET``, set by the device plugin) under the job named by
``CONSPIRATOR_NAMESPACE``/``CONSPIRATOR_JOB`` (set by the operator), and returns the
tensor the agent writes into: a numpy array, or a torch tensor when torch is installed
(``framework="numpy"`` forces numpy).  The buffer has ``slots`` tensors so that the agent
can fill the next while the model runs on one; :func:`serve` calls ``fn`` with the tensor
of the slot that holds the current request (the returned one is slot 0).

This package imports only the wire protocol and ``_native`` (DESIGN section 2).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from conspirator.runtime.registration import (
    ENV_SOCKET,
    Registrar,
    RegistrationError,
    UnixRegistrar,
)
from conspirator.runtime.replica import Identity, Model, Replica, Result

__all__ = ["Identity", "Model", "Registrar", "RegistrationError", "Replica", "Result",
           "UnixRegistrar", "current", "input_tensor", "serve"]

log = logging.getLogger("conspirator.runtime")


class _State:
    """This process's replica (one per worker process) and its torch views."""

    replica: Replica | None = None
    torch_views: list[Any] | None = None


_STATE = _State()


def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def input_tensor(shape: Sequence[int], dtype: str | np.dtype[Any] = "float32", *,
                 slots: int = 4, result_bytes: int = 1 << 16, device: str = "cpu",
                 framework: str = "auto", registry: str | os.PathLike[str] | None = None,
                 registrar: Registrar | None = None, job: str | None = None,
                 replica: str | None = None, weight: float | None = None) -> Any:
    """Allocate and register this worker's input buffer; return its (slot 0) tensor."""
    if _STATE.replica is not None:
        raise RuntimeError("input_tensor() was already called in this process")
    identity = Identity.from_env(job, replica, weight)
    rep: Replica
    if device.startswith("cuda"):
        from conspirator.runtime.cuda_replica import CudaReplica

        index = int(device.partition(":")[2] or 0)
        rep = CudaReplica(shape, dtype, slots=slots, result_bytes=result_bytes,
                          device=index, identity=identity)
    elif device == "cpu":
        rep = Replica(shape, dtype, slots=slots, result_bytes=result_bytes,
                      identity=identity)
    else:
        raise ValueError(f"unknown device {device!r} (cpu, cuda, cuda:N)")
    if registrar is None:
        path = registry or os.environ.get(ENV_SOCKET)
        if not path:
            rep.close()
            raise RegistrationError(f"no buffer registry: set {ENV_SOCKET} or pass registry=")
        registrar = UnixRegistrar(path)
    try:
        rep.register(registrar)
    except BaseException:
        rep.close()
        raise
    _STATE.replica = rep
    torch = _torch() if framework in ("auto", "torch") else None
    if framework == "torch" and torch is None:
        raise ImportError("framework='torch' but torch is not installed")
    if torch is not None and device == "cpu":
        _STATE.torch_views = [torch.from_numpy(a) for a in rep.slot_arrays]
        return _STATE.torch_views[0]
    _STATE.torch_views = None
    return rep.slot_arrays[0]


def current() -> Replica:
    if _STATE.replica is None:
        raise RuntimeError("call input_tensor() first")
    return _STATE.replica


def serve(fn: Model, *, replica: Replica | None = None, stop: threading.Event | None = None,
          handle_signals: bool = True) -> int:
    """Run the request loop until SIGTERM (a drain: see :meth:`Replica.drain`), SIGINT or
    ``stop`` (at once); returns requests served.

    Also watches the registration: if the registry goes away, the buffer is registered
    again once it is back (the agent sees a withdrawal, then a new publication).
    """
    rep = replica or current()
    views = _STATE.torch_views if replica is None else None
    if views is not None:
        torch_views = views

        def call(x: Any) -> Result:
            slot = _slot_of(rep, x)
            return fn(torch_views[slot] if slot is not None else x)
        model: Model = call
    else:
        model = fn
    if handle_signals and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: rep.drain())
        signal.signal(signal.SIGINT, lambda *_: rep.stop())
    watcher = None
    if isinstance(rep._registrar, UnixRegistrar):
        watcher = threading.Thread(target=_watch_registry, args=(rep, stop), daemon=True,
                                   name="conspirator-registration")
        watcher.start()
    if stop is not None:
        def relay() -> None:
            stop.wait()
            rep.stop()

        threading.Thread(target=relay, daemon=True).start()
    try:
        rep.serve(model)
    finally:
        rep.close()
        if rep is _STATE.replica:
            _STATE.replica = None
    return rep.served


def _slot_of(rep: Replica, x: Any) -> int | None:
    for i, a in enumerate(rep.slot_arrays):
        if x is a or (isinstance(x, np.ndarray) and x.base is not None and
                      np.shares_memory(x, a)):
            return i
    return None


def _watch_registry(rep: Replica, stop: threading.Event | None) -> None:
    reg = rep._registrar
    while isinstance(reg, UnixRegistrar) and not rep._stop.is_set():
        if not reg.wait_closed(0.5):
            continue
        if rep._stop.is_set():
            return
        log.warning("buffer registry closed the session; registering again")
        reg.close()
        while not rep._stop.is_set() and not (stop and stop.is_set()):
            try:
                rep.buffer_id = reg.register(rep.spec, rep.fds)
                log.info("registered again as buffer %d", rep.buffer_id)
                break
            except RegistrationError as e:
                log.info("registry not back yet: %s", e)
                rep._stop.wait(1.0)
