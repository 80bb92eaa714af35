"""The node daemon (``conspirator node-daemon``): GPU backends, MIG layout applier,
kubelet device plugin, input-buffer registry.

- :mod:`.backend`: the GPU backend interface; :mod:`.nvml` (real GPUs) and
  :mod:`.simulated` (a node spec file) implement it with NVML's semantics.
- :mod:`.applier`: reconciles ``GPUNode.spec`` to the GPUs.
- :mod:`.plugin`: the kubelet device plugin API v1beta1 (gRPC over unix sockets).
- :mod:`.registry`: the node-local socket where workers register their input buffers,
  and :mod:`.publisher`, the authenticated channel that hands them to the DPU agent.
- :mod:`.daemon`: ties them to the API server (GPUNode status, events, kwok capacity).

This package never imports the operator or the DPU agent (DESIGN section 2).
"""
