"""The DPU agent (``conspirator dpu-agent``): keeps the host CPU off the request path.

Clients send requests to the agent on the node's DPU; it receives them into its staging
pool, picks a replica of the job (least outstanding work weighted by throughput), copies
the bytes straight into that replica's registered input buffer, rings its doorbell and
returns the worker's result on the client's connection.  DESIGN section 6; docs/datapath.md.

- :mod:`.server`: asyncio listeners, handshakes, the TCP zero-copy receive protocol and the
  one-sided (local / RDMA) protocol, the registry's publish channel;
- :mod:`.core`: replicas, the dispatcher, completions, timeouts;
- :mod:`.staging`: the staging pool (and backpressure); :mod:`.targets`: shared-memory and
  CUDA targets, and the BlueField DMA seam; :mod:`.rdma`: the RDMA transport;
- :mod:`.tokens`: per-job tokens; :mod:`.localregistry`: a stand-in for the node daemon's
  buffer registry (development, tests, benchmarks).

Never imports the operator or the node daemon (DESIGN section 2).
"""
