"""Generated stubs of the kubelet DRA plugin API v1 (``conspirator gen-protos``)."""
