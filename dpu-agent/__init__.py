"""The DPU agent (``conspirator dpu-agent``): keeps the host CPU off the request path.

Clients send requests to the agent on the node's DPU; it receives them into its staging
pool, picks a replica of the job (least outstanding work weighted by throughput), copies
the bytes straight into that replica's registered input buffer, rings its doorbell and
returns the worker's result on the client's connection.  DESIGN section 6; docs/datapath.md.

Modules, each importing only those below it (``cli`` at the top)::

    cli > server | localregistry | metrics > accept | oip > rdma > sessionstart
        > inline | staged > session | poller > core > limits > state > targets | staging
        | tokens | oiptensor

- :mod:`.server`: the listeners and their lifecycle; :mod:`.accept`: a connection from
  accept on (the shared handshake, then a client's session set-up or the registry's
  publish channel); :mod:`.sessionstart` and :mod:`.rdma`: the transports' set-up;
- :mod:`.oip`: the KServe / Triton Open Inference Protocol listener (gRPC ``ModelInfer``
  into the same dispatcher), :mod:`.oiptensor`: its tensors checked against the job's input;
- :mod:`.inline`: the TCP zero-copy receive protocol; :mod:`.staged`: the one-sided
  (local / RDMA) protocol; :mod:`.session`: what both share (the connection's session);
- :mod:`.core`: dispatch, completions, timeouts; :mod:`.state`: requests, replicas, jobs;
  :mod:`.poller`: busy polling;
- :mod:`.staging`: the staging pool (and backpressure); :mod:`.targets`: shared-memory and
  CUDA targets, and the BlueField DMA seam; :mod:`.tokens`: per-job tokens;
- :mod:`.limits`: the caps a network service keeps (pending handshakes, connections per
  agent and per job, the idle timeout);
- :mod:`.localregistry`: the node daemon's worker registry with a trust-all identity
  (development, tests, benchmarks); :mod:`.metrics`: Prometheus.

Never imports the operator or the node daemon (DESIGN section 2).
"""
