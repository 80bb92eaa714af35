"""Certificates (openssl) and kubeconfigs of the local cluster."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from conspirator_e2e.constants import APISERVER_PORT
from conspirator_e2e.procs import run

# --------------------------------------------------------------------------------------------
# Certificates (openssl), kubeconfigs


class Certs:
    """A CA and the certificates it signs, made with the openssl command line (ECDSA P-256)."""

    def __init__(self, d: Path) -> None:
        self.d = d

    def make_ca(self) -> None:
        run(["openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", self.d / "ca.key",
             "-out", self.d / "ca.crt", "-days", "3650", "-subj", "/CN=conspirator-e2e-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"])

    def issue(self, name: str, cn: str, *, org: str | None = None, server: bool = False,
              sans: Sequence[str] = ()) -> None:
        subj = (f"/O={org}" if org else "") + f"/CN={cn}"
        ext = self.d / f"{name}.ext"
        usage = "serverAuth" if server else "clientAuth"
        lines = ["basicConstraints=critical,CA:FALSE",
                 "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={usage}"]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        csr = self.d / f"{name}.csr"
        run(["openssl", "req", "-new", "-nodes", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", self.d / f"{name}.key",
             "-out", csr, "-subj", subj])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self.d / "ca.crt",
             "-CAkey", self.d / "ca.key", "-CAcreateserial", "-days", "3650",
             "-extfile", ext, "-out", self.d / f"{name}.crt"])
        csr.unlink()
        ext.unlink()

    def service_account_keys(self) -> None:
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
             "-out", self.d / "sa.key"])
        run(["openssl", "ec", "-in", self.d / "sa.key", "-pubout", "-out", self.d / "sa.pub"])


def write_kubeconfig(path: Path, pki: Path, cert: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "conspirator-e2e", "cluster": {
            "server": f"https://127.0.0.1:{APISERVER_PORT}",
            "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": cert, "user": {
            "client-certificate": str(pki / f"{cert}.crt"),
            "client-key": str(pki / f"{cert}.key")}}],
        "contexts": [{"name": "conspirator-e2e",
                      "context": {"cluster": "conspirator-e2e", "user": cert}}],
        "current-context": "conspirator-e2e",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
