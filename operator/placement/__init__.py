"""The placement engine: pure functions and data, no I/O, no Kubernetes.

The kopf handlers and the simulator both call it.
"""
