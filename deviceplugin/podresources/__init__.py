"""The kubelet's PodResources API (``k8s.io/kubelet/pkg/apis/podresources/v1``), as the node
daemon reads it: which pod and container hold which device of which resource."""
