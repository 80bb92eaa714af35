"""Build container images as OCI image-layout tarballs, with no registry and no Docker.

An image is a list of gzip'd tar layers, an image config and a manifest; an archive is an
``index.json`` naming one or more images, with every blob content-addressed by sha256 under
``blobs/sha256/`` as the OCI image-layout specification lays them out.  ``ctr -n k8s.io
images import`` reads the tarball; each manifest's ``io.containerd.image.name`` annotation
gives its image the full name a pod's ``image:`` field names.  Images of one archive that
share a layer store it once.

Layers come from three sources: files and literal bytes (:class:`ImageSpec`, the small static
test images, one layer), a directory tree (:func:`layer_from_tree`: a whole root file system,
or the part of one that changed since a :func:`snapshot`, deletions as ``.wh.`` whiteouts).

The output is reproducible: every tar entry has mtime 0, entries are sorted (a directory
before what it holds), the owner is numeric only (no user or group names), and gzip's header
carries no name and timestamp 0, so the same inputs give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = "1970-01-01T00:00:00Z"
WHITEOUT_PREFIX = ".wh."

# Directories every ImageSpec image gets, so runc and the kubelet find their mount points.
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
    """What goes into one single-layer image.

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


@dataclass(frozen=True)
class Layer:
    """One gzip'd layer blob: in memory (``data``) or in a file (``path``)."""

    digest: str  # sha256 of the gzip'd blob: what the manifest names
    diff_id: str  # sha256 of the uncompressed tar: what the config's rootfs names
    size: int
    path: Path | None = None
    data: bytes | None = None
    created_by: str = "conspirator e2e/oci.py"

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return self.path.open("rb")

    def to_json(self) -> dict[str, object]:
        """What :meth:`from_json` reads back (a cached layer's record)."""
        return {"digest": self.digest, "diffID": self.diff_id, "size": self.size,
                "path": str(self.path) if self.path else None, "createdBy": self.created_by}

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> Layer:
        path = d.get("path")
        return cls(digest=str(d["digest"]), diff_id=str(d["diffID"]), size=int(str(d["size"])),
                   path=Path(str(path)) if path else None, created_by=str(d["createdBy"]))


@dataclass(frozen=True)
class Image:
    """One image of an archive: its name, its layers (bottom first) and its run config."""

    name: str
    layers: Sequence[Layer]
    entrypoint: Sequence[str]
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/bin:/usr/bin:/bin",)
    workdir: str = "/"
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ---- writing layers -------------------------------------------------------------------------

# One tar entry: its header and its data (bytes, a file to copy, or None for no data).
Entry = tuple[tarfile.TarInfo, "bytes | Path | None"]


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through to ``sink``."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def _entry(name: str, data: bytes | None, mode: int, uid: int = 0, gid: int = 0) -> Entry:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = len(data)
    return info, data


def write_layer(entries: Iterable[Entry], out: BinaryIO, compresslevel: int = 6
                ) -> tuple[str, str, int]:
    """Write ``entries`` (in the order given) as a gzip'd tar to ``out``.

    Returns (digest of the gzip'd bytes, diff_id of the tar, size of the gzip'd bytes).
    """
    gz_hash = _HashingWriter(out)
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz_hash, mtime=0,
                       compresslevel=compresslevel) as gz:
        raw_hash = _HashingWriter(gz)  # type: ignore[arg-type]
        with tarfile.open(fileobj=raw_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info, data in entries:
                if isinstance(data, Path):
                    with data.open("rb") as f:
                        tar.addfile(info, f)
                elif data is None:
                    tar.addfile(info)
                else:
                    tar.addfile(info, io.BytesIO(data))
    return "sha256:" + gz_hash.sha.hexdigest(), "sha256:" + raw_hash.sha.hexdigest(), gz_hash.size


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def build_layer(spec: ImageSpec) -> tuple[bytes, str]:
    """Return (gzip'd layer, diff_id) for an ImageSpec's single layer."""
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
    out = io.BytesIO()
    _, diff_id, _ = write_layer((_entry(n, *entries[n])
                                 for n in sorted(entries, key=lambda n: n.split("/"))), out)
    return out.getvalue(), diff_id


# ---- layers from directory trees --------------------------------------------------------------

# What a snapshot records per path: (file type and mode, uid, gid, size, mtime_ns, link target)
Stat = tuple[int, int, int, int, int, str]


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path under ``root`` (relative, '/'-separated), sorted, a directory before its
    contents; symbolic links are not followed."""

    def rec(rel: str) -> Iterator[tuple[str, os.stat_result]]:
        with os.scandir(root / rel if rel else root) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path = f"{rel}/{name}" if rel else name
            st = os.lstat(root / path)
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                yield from rec(path)

    # Sorting siblings and descending depth-first gives the same order as sorting the full
    # paths except where a name sorts below '/' ('a-b' vs 'a/c'); sort the whole list to be
    # independent of that.
    return iter(sorted(rec(""), key=lambda item: item[0].split("/")))


def snapshot(root: Path) -> dict[str, Stat]:
    """The metadata of every path under ``root``: what :func:`changes` compares against."""
    out: dict[str, Stat] = {}
    for rel, st in walk(root):
        target = os.readlink(root / rel) if stat.S_ISLNK(st.st_mode) else ""
        size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
        mtime = 0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, size, mtime, target)
    return out


def changes(before: Mapping[str, Stat], root: Path) -> tuple[list[str], list[str]]:
    """What differs in ``root`` from the ``before`` snapshot: (added or changed paths, deleted
    paths).  A directory counts as changed only when its mode or owner changed (its mtime
    moves with every entry added); a deleted directory is reported alone, not its contents."""
    after = snapshot(root)
    changed = [p for p, s in after.items() if before.get(p) != s]
    deleted_all = set(before) - set(after)
    deleted = sorted(p for p in deleted_all
                     if not any(parent in deleted_all for parent in _parents(p)))
    return changed, deleted


def tree_entries(root: Path, paths: Iterable[str] | None = None,
                 deleted: Iterable[str] = ()) -> list[Entry]:
    """Tar entries for ``paths`` under ``root`` (every path when None) with the parent
    directories they need, plus whiteouts for ``deleted``.  Owners, modes (setuid bits
    included) and symbolic links are kept; mtimes are 0; hard links within the layer stay hard
    links; device nodes, sockets and FIFOs are left out (the runtime provides /dev)."""
    if paths is None:
        stats = dict(walk(root))
    else:
        wanted: set[str] = set()
        for p in paths:
            wanted.add(p)
            wanted.update(_parents(p))
        for p in deleted:
            wanted.update(_parents(p))
        stats = {p: os.lstat(root / p) for p in wanted}
    names: dict[str, str] = {}  # sorted key -> name
    for p in stats:
        names[p] = p
    whiteouts = {}
    for p in deleted:
        parent, _, base = p.rpartition("/")
        w = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else f"{WHITEOUT_PREFIX}{base}"
        whiteouts[w] = p
        names[w] = w
    entries: list[Entry] = []
    first_link: dict[tuple[int, int], str] = {}
    for name in sorted(names, key=lambda n: n.split("/")):
        if name in whiteouts:
            entries.append(_entry(name, b"", 0o644))
            continue
        st = stats[name]
        mode = stat.S_IMODE(st.st_mode)
        info = tarfile.TarInfo(name)
        info.mtime = 0
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mode = mode
        data: bytes | Path | None = None
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(root / name)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in first_link:
                info.type = tarfile.LNKTYPE
                info.linkname = first_link[key]
            else:
                if st.st_nlink > 1:
                    first_link[key] = name
                info.size = st.st_size
                data = root / name
        else:
            continue
        entries.append((info, data))
    return entries


def layer_from_tree(root: Path, out: Path, paths: Iterable[str] | None = None,
                    deleted: Iterable[str] = (), created_by: str = "conspirator e2e/oci.py",
                    compresslevel: int = 6) -> Layer:
    """Pack ``paths`` of ``root`` (all of it when None) and whiteouts for ``deleted`` into the
    gzip'd layer file ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:
        digest, diff_id, size = write_layer(tree_entries(root, paths, deleted), f,
                                            compresslevel)
    tmp.replace(out)
    return Layer(digest=digest, diff_id=diff_id, size=size, path=out, created_by=created_by)


# ---- image configs, manifests, archives -------------------------------------------------------

def image_config(image: Image) -> bytes:
    cfg: dict[str, object] = {
        "Entrypoint": list(image.entrypoint),
        "Cmd": list(image.cmd) or None,
        "Env": list(image.env),
        "WorkingDir": image.workdir,
        "Labels": dict(image.labels) or None,
    }
    if image.user:
        cfg["User"] = image.user
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in image.layers]},
        "history": [{"created_by": layer.created_by, "created": EPOCH}
                    for layer in image.layers],
        "created": EPOCH,
    }
    return _json(config)


def manifest(image: Image, config_bytes: bytes) -> bytes:
    return _json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                   for layer in image.layers],
    })


def write_layout(images: Sequence[Image], out: BinaryIO) -> dict[str, str]:
    """Write an OCI image-layout tarball holding ``images`` to ``out``; return each image's
    manifest digest by name.  A layer shared by several images is stored once."""
    if len({i.name for i in images}) != len(images):
        raise ValueError("two images of one archive have the same name")
    blobs: dict[str, bytes | Layer] = {}
    descriptors = []
    digests: dict[str, str] = {}
    for image in images:
        config_bytes = image_config(image)
        manifest_bytes = manifest(image, config_bytes)
        blobs[_digest(config_bytes)] = config_bytes
        blobs[_digest(manifest_bytes)] = manifest_bytes
        for layer in image.layers:
            blobs[layer.digest] = layer
        _, _, tag = image.name.rpartition(":")
        digests[image.name] = _digest(manifest_bytes)
        descriptors.append({
            "mediaType": MEDIA_MANIFEST,
            "digest": _digest(manifest_bytes),
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": image.name,
                            "org.opencontainers.image.ref.name": tag},
        })
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": descriptors}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, _ in (_entry("blobs", None, 0o755), _entry("blobs/sha256", None, 0o755)):
            tar.addfile(info)
        for digest in sorted(blobs):
            blob = blobs[digest]
            name = "blobs/sha256/" + digest.split(":", 1)[1]
            if isinstance(blob, Layer):
                info, _ = _entry(name, b"", 0o644)
                info.size = blob.size
                with blob.open() as f:
                    tar.addfile(info, f)
            else:
                info, _ = _entry(name, blob, 0o644)
                tar.addfile(info, io.BytesIO(blob))
        for name, data in (("index.json", _json(index)),
                           ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')):
            info, _ = _entry(name, data, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return digests


def write_images(images: Sequence[Image], path: Path) -> dict[str, str]:
    """Write the archive of ``images`` to ``path`` (atomically); manifest digests by name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        digests = write_layout(images, f)
    tmp.replace(path)
    return digests


def _spec_image(spec: ImageSpec) -> Image:
    data, diff_id = build_layer(spec)
    layer = Layer(digest=_digest(data), diff_id=diff_id, size=len(data), data=data)
    return Image(name=spec.name, layers=[layer], entrypoint=spec.entrypoint, cmd=spec.cmd,
                 env=spec.env, workdir=spec.workdir, labels=spec.labels)


def build_archive(spec: ImageSpec) -> bytes:
    """Return the OCI image-layout tarball of ``spec`` as bytes."""
    out = io.BytesIO()
    write_layout([_spec_image(spec)], out)
    return out.getvalue()


def write_archive(spec: ImageSpec, path: Path) -> str:
    """Write the tarball of ``spec`` to ``path``; return the manifest digest."""
    return write_images([_spec_image(spec)], path)[spec.name]


def read_archive(path: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    """(index.json, the small JSON blobs by digest) of an archive: for tests and checks."""
    blobs: dict[str, bytes] = {}
    index: dict[str, object] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            assert f is not None
            if member.name == "index.json":
                index = json.load(f)
            elif member.name.startswith("blobs/sha256/") and member.size < 1 << 20:
                data = f.read()
                if data[:1] == b"{":
                    blobs["sha256:" + member.name.rsplit("/", 1)[1]] = data
    return index, blobs
