"""Conspirator: SmartNIC-aided control plane for ML inference on heterogeneous GPU clusters."""

__version__ = "0.1.0"
