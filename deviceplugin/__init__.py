"""Node daemon: kubelet device plugin, GPU backends, MIG layout applier (not built yet)."""
