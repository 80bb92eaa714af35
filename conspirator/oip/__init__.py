"""The KServe / Triton Open Inference Protocol (v2, gRPC) in the core.

:mod:`.v2` holds the protocol's own ``grpc_predict_v2.proto`` (package ``inference``,
service ``GRPCInferenceService``) and the stubs ``conspirator gen-protos`` makes from it; the
DPU agent serves it (``conspirator.dpu_agent.oip``) and :mod:`.client` is the client side
``conspirator loadgen --protocol oip`` uses.  docs/datapath.md, "Open Inference Protocol".
"""
