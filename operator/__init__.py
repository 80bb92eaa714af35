"""The Conspirator operator (import name ``conspirator.operator``).

Sub-packages:
- ``placement``: the pure placement engine (data in, decision out).
- ``simulator``: the trace-driven simulator that evaluates placement policies.
"""
