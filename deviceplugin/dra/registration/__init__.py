"""Generated stubs of the kubelet plugin registration API (``conspirator gen-protos``)."""
