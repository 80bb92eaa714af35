"""The local cluster's control plane: certificates, etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, and their health probes."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

from conspirator_e2e.certs import Certs, write_kubeconfig
from conspirator_e2e.clusterbase import ClusterBase
from conspirator_e2e.constants import (
    APISERVER_PORT,
    CONTROLLER_MANAGER_PORT,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    KUBELET_HEALTHZ_PORT,
    NODE_IP,
    SCHEDULER_PORT,
    SERVICE_CIDR,
    SERVICE_IP,
)
from conspirator_e2e.paths import feature_gates_flag

#: The API client rates of kube-controller-manager and kube-scheduler: what Kubernetes' own
#: scalability tests (clusterloader2 on 100 to 5,000 nodes, CONTROLLER_MANAGER_TEST_ARGS and
#: SCHEDULER_TEST_ARGS) give both, instead of the defaults (controller-manager 20/s, burst
#: 30; scheduler 50/s, burst 100), which would make a 1,000-job benchmark measure the
#: controller-manager's rate limiter rather than the operator.  The scheduler has no
#: --config file here, so its flags apply.
PRODUCTION_CLIENT_RATES = ("--kube-api-qps=100", "--kube-api-burst=100")


class ControlPlane(ClusterBase):
    """Starting and probing the control plane."""

    def is_up(self) -> bool:
        return all(self.running().values()) and self._apiserver_ready()

    # ---- health probes ------------------------------------------------------------------

    def _https(self, url: str, *, client: bool = True, verify: bool = True) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.paths.pki / "ca.crt"))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if client:
            ctx.load_cert_chain(self.paths.pki / "admin.crt", self.paths.pki / "admin.key")
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _apiserver_ready(self) -> bool:
        try:
            code, _ = self._https(f"https://127.0.0.1:{APISERVER_PORT}/readyz")
        except (OSError, ssl.SSLError):
            return False
        return code == 200

    def _etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(json.load(resp).get("health") == "true")

    def _healthz(self, port: int) -> bool:
        code, _ = self._https(f"https://127.0.0.1:{port}/healthz", client=False, verify=False)
        return code == 200

    def _kubelet_healthy(self) -> bool:
        url = f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)

    # ---- certificates and kubeconfigs ---------------------------------------------------

    def _write_pki(self, node_name: str) -> None:
        pki = self.paths.pki
        pki.mkdir(parents=True, exist_ok=True)
        ca = Certs(pki)
        ca.make_ca()
        ca.issue(
            "apiserver", "kube-apiserver", server=True,
            sans=["IP:127.0.0.1", f"IP:{SERVICE_IP}", f"IP:{NODE_IP}", "DNS:localhost",
                  "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                  "DNS:kubernetes.default.svc.cluster.local"],
        )
        ca.issue("admin", "conspirator-e2e-admin", org="system:masters")
        ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                 org="system:masters")
        ca.issue("kube-controller-manager", "system:kube-controller-manager")
        ca.issue("kube-scheduler", "system:kube-scheduler")
        ca.issue("kubelet", f"system:node:{node_name}", org="system:nodes")
        ca.issue("kubelet-serving", node_name, server=True,
                 sans=[f"IP:{NODE_IP}", f"DNS:{node_name}", "IP:127.0.0.1"])
        ca.issue("kwok", "kwok-controller", org="system:masters")
        ca.service_account_keys()

        write_kubeconfig(self.paths.kubeconfig, pki, "admin")
        for name, cert in (("kube-controller-manager", "kube-controller-manager"),
                           ("kube-scheduler", "kube-scheduler"), ("kubelet", "kubelet"),
                           ("kwok", "kwok")):
            write_kubeconfig(self.paths.component_kubeconfig(name), pki, cert)

    # ---- control plane ------------------------------------------------------------------

    def _start_etcd(self) -> None:
        data = self.paths.state / "etcd"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._spawn("etcd", [
            self.paths.binary("etcd"),
            "--name=conspirator-e2e",
            f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-cluster=conspirator-e2e=http://127.0.0.1:{ETCD_PEER_PORT}",
            "--listen-metrics-urls=",
            # A test cluster: fewer fsyncs' worth of waiting, small snapshots.
            "--unsafe-no-fsync=true",
            "--snapshot-count=10000",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ])

    def _start_apiserver(self) -> None:
        pki = self.paths.pki
        self._spawn("kube-apiserver", [
            self.paths.binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--bind-address=127.0.0.1",
            f"--secure-port={APISERVER_PORT}",
            f"--advertise-address={NODE_IP}",
            # The kubernetes Service would point at the loopback address, which Endpoints refuse.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            feature_gates_flag(),
            "--profiling=false",
            "--v=1",
        ])

    def _start_controller_manager(self) -> None:
        kc = self.paths.component_kubeconfig("kube-controller-manager")
        pki = self.paths.pki
        self._spawn("kube-controller-manager", [
            self.paths.binary("kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={CONTROLLER_MANAGER_PORT}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            *PRODUCTION_CLIENT_RATES,
            feature_gates_flag(),
            "--profiling=false",
            "--v=1",
        ])

    def _start_scheduler(self) -> None:
        kc = self.paths.component_kubeconfig("kube-scheduler")
        self._spawn("kube-scheduler", [
            self.paths.binary("kube-scheduler"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={SCHEDULER_PORT}",
            "--leader-elect=false",
            *PRODUCTION_CLIENT_RATES,
            feature_gates_flag(),
            "--profiling=false",
            "--v=1",
        ])

    def _node_ready(self, name: str) -> bool:
        proc = self.kubectl("get", "node", name, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        node = json.loads(proc.stdout)
        conds = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def _default_sa(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default",
                            check=False).returncode == 0
