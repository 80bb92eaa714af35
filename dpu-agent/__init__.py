"""DPU agent: moves request data into GPU input buffers (not built yet)."""
