"""The data path's wire protocol (DESIGN section 6): frames, the authenticated handshake,
buffer registration, and the shared-memory layout of a replica's input buffer and rings.

Imports no component; the worker runtime, the client SDK, the DPU agent and the node
daemon's buffer registry all speak it.
"""
