"""The node side of the DRA driver ``conspirator.io`` (resource.k8s.io/v1, Kubernetes 1.35).

* :mod:`.slices`: the node's GPUs as ResourceSlices (one counter set per MIG GPU, one device
  per possible MIG placement and one per whole GPU), pure;
* :mod:`.publish`: the diff of desired against existing slices and the publisher that
  applies it through a :class:`~.publish.SliceClient`;
* :mod:`.cdi`: per-claim CDI spec files;
* :mod:`.checkpoint`: the prepared claims, kept in a JSON file across restarts;
* :mod:`.prepare`: NodePrepareResources / NodeUnprepareResources on a
  :class:`~conspirator.deviceplugin.backend.GpuBackend`;
* :mod:`.server`: the kubelet's DRA plugin and registration gRPC servers;
* :mod:`.kubeclient`: the API-server implementations (ResourceClaim reader, slice client).

docs/dra.md describes the model.
"""
