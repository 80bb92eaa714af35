"""The Conspirator operator (import name ``conspirator.operator``).

Sub-packages:
- ``placement``: the pure placement engine (data in, decision out).
- ``simulator``: the trace-driven simulator that evaluates placement policies.

The operator itself (``conspirator operator``, docs/operator.md):
- ``handlers``: the kopf handlers; ``runner``: kopf, the re-plan loop, metrics, peering;
- ``controller``: the single planner that decides and writes;
- ``datapath``: the per-job token Secrets and the DPU agents' aggregate Secret;
- ``views``, ``translate``, ``status``, ``manifests``, ``replan``: pure translation between
  the API objects and the engine (tested without a cluster);
- ``kube``: the API calls; ``settings``, ``metrics``, ``peering``, ``cli``.
"""
