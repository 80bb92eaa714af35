"""Build container images as OCI image-layout tarballs, with no registry and no Docker.

An image here is one gzip'd tar layer made from files on this machine, an image config, a
manifest and an ``index.json``, all content-addressed by sha256 as the OCI image-layout
specification lays them out.  ``ctr -n k8s.io images import`` reads the tarball; the
``io.containerd.image.name`` annotation gives the image its full name, which is what a pod's
``image:`` field names.

The output is reproducible: every tar entry has mtime 0 and uid/gid 0, entries are sorted, and
gzip's header timestamp is 0, so the same inputs give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# Directories every image gets, so runc and the kubelet find their mount points.
BASE_DIRS: dict[str, int] = {
    "dev": 0o755,
    "etc": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "tmp": 0o1777,
    "var": 0o755,
    "var/run": 0o755,
}


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one image.

    ``files`` maps a path inside the image (no leading slash) to the file on this machine
    whose bytes it gets; ``contents`` maps a path to literal bytes.  Both are installed with
    ``mode``-style permissions from ``modes`` (default 0o755 for ``files``, 0o644 for
    ``contents``).
    """

    name: str
    entrypoint: Sequence[str]
    cmd: Sequence[str] = ()
    files: Mapping[str, Path] = field(default_factory=dict)
    contents: Mapping[str, bytes] = field(default_factory=dict)
    modes: Mapping[str, int] = field(default_factory=dict)
    env: Sequence[str] = ("PATH=/usr/local/bin:/usr/bin:/bin",)
    workdir: str = "/"
    labels: Mapping[str, str] = field(default_factory=dict)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def build_layer(spec: ImageSpec) -> tuple[bytes, str]:
    """Return (gzip'd layer, diff_id) for the image's single layer."""
    entries: dict[str, tuple[bytes | None, int]] = {}
    for d, mode in BASE_DIRS.items():
        entries[d] = (None, mode)
    payload: dict[str, tuple[bytes, int]] = {}
    for path, src in spec.files.items():
        payload[path.lstrip("/")] = (Path(src).read_bytes(), spec.modes.get(path, 0o755))
    for path, data in spec.contents.items():
        payload[path.lstrip("/")] = (data, spec.modes.get(path, 0o644))
    for path, (data, mode) in payload.items():
        for parent in _parents(path):
            entries.setdefault(parent, (None, 0o755))
        entries[path] = (data, mode)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            content, perm = entries[name]
            _tar_add(tar, name, content, perm)
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(tar_bytes)
    return gz.getvalue(), _digest(tar_bytes)


def build_archive(spec: ImageSpec) -> bytes:
    """Return the OCI image-layout tarball of ``spec`` as bytes."""
    layer, diff_id = build_layer(spec)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(spec.entrypoint),
            "Cmd": list(spec.cmd) or None,
            "Env": list(spec.env),
            "WorkingDir": spec.workdir,
            "Labels": dict(spec.labels) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "conspirator e2e/oci.py", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": _digest(layer), "size": len(layer)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    _, _, tag = spec.name.rpartition(":")
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": _digest(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": spec.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, "blobs", None, 0o755)
        _tar_add(tar, "blobs/sha256", None, 0o755)
        for blob in sorted((config_bytes, manifest_bytes, layer), key=_digest):
            _tar_add(tar, "blobs/sha256/" + _digest(blob).split(":", 1)[1], blob, 0o644)
        _tar_add(tar, "index.json", index_bytes, 0o644)
        _tar_add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)
    return out.getvalue()


def write_archive(spec: ImageSpec, path: Path) -> str:
    """Write the tarball of ``spec`` to ``path``; return the manifest digest."""
    data = build_archive(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    return str(index["manifests"][0]["digest"])
