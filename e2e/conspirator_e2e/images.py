"""The product images (operator, node daemon, DPU agent), built here without Docker.

``images/Dockerfile`` builds them for users with Docker and a registry; this module builds the
equivalent images on this machine (root, apt and PyPI reachable, no Docker) and imports them
into the local cluster's containerd, as OCI archives (e2e/conspirator_e2e/oci.py).  Three
layers, shared by the three images, each cached under ``$CONSPIRATOR_CACHE/images/product``
by a hash of what it is made of:

1. **os**: ``debootstrap --variant=minbase bookworm`` with the shared libraries the Python
   runtime links (the packages ``python:3.11-slim-bookworm`` keeps), ca-certificates, netbase
   and tzdata; the user ``conspirator`` (uid/gid 65532); apt lists, caches, docs, man pages
   and locales removed (and kept out of later installs, as Debian's slim images do).
2. **python**: the interpreter running this module (``sys.base_prefix``: a CPython built from
   source into its own prefix, like the official image's /usr/local one) copied to /usr/local
   without its tests, tkinter and idle; ``ldconfig``; the wheels of the project's dependencies
   (``pip wheel -r`` of pyproject's list, as the Dockerfile's builder stage) installed by
   pip inside the root file system (chroot), their test suites removed; byte code compiled
   ahead with unchecked hashes.
3. **app**: the project's wheel (built from the sources the Dockerfile copies, with
   ``conspirator._native`` compiled) installed the same way; ``conspirator`` in
   /usr/local/bin.

The images differ only in their config: the entrypoint ``conspirator <component>`` and the
user (65532 for the operator and the agent; root for the node daemon), as the Dockerfile's
targets do.  ``e2e/tests/test_oci.py`` parses the Dockerfile and checks it agrees with
:data:`COMPONENTS`, :data:`ENV`, :data:`WORKDIR` and :data:`SOURCE_PATHS`.

Bump :data:`BUILDER_VERSION` when a change here must rebuild the cached os and python layers
(the app layer follows the sources by itself).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conspirator_e2e import oci

if TYPE_CHECKING:
    from conspirator_e2e.cluster import LocalCluster, Paths

BUILDER_VERSION = "2"
REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "Dockerfile"
REGISTRY = "conspirator.local"
SUITE = "bookworm"
MIRROR = os.environ.get("CONSPIRATOR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
UID = GID = 65532
USER_NAME = "conspirator"
WORKDIR = "/home/conspirator"
# The image config's environment: PATH and LANG as python:3.11-slim-bookworm sets them, the rest
# as images/Dockerfile's runtime stage does.
ENV: tuple[str, ...] = (
    "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    f"HOME={WORKDIR}",
)
# What the Dockerfile's builder stage copies (and .dockerignore admits) from the repository.
SOURCE_PATHS: tuple[str, ...] = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
                                 "conspirator", "operator", "deviceplugin", "dpu-agent",
                                 "native", "images/constraints.txt")
CONSTRAINTS = REPO / "images" / "constraints.txt"
"""The dependencies' pinned versions (images/lock.py), used by both builds."""
# The Python runtime's shared libraries (found with ldd, as the official image finds them),
# the CA bundle, /etc/services and protocols, time zones.
RUNTIME_PACKAGES: tuple[str, ...] = (
    "ca-certificates", "netbase", "tzdata", "libbz2-1.0", "libcrypt1", "libexpat1",
    "libffi8", "liblzma5", "libncursesw6", "libnsl2", "libreadline8", "libsqlite3-0",
    "libssl3", "libtinfo6", "libtirpc3", "libuuid1", "zlib1g",
)
# Left out of the Python prefix (as the official image leaves them out, or never builds them).
PYTHON_EXCLUDE = ("site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
                  "lib2to3/tests", "unittest/test", "__pycache__")
DPKG_EXCLUDES = """\
# As Debian's slim images: no documentation, manual pages or translations in this image.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""


@dataclass(frozen=True)
class Component:
    """One product image: its sub-command and the user it runs as."""

    name: str
    user: str

    @property
    def entrypoint(self) -> list[str]:
        return ["conspirator", self.name]


COMPONENTS: dict[str, Component] = {
    "operator": Component("operator", f"{UID}:{GID}"),
    "node-daemon": Component("node-daemon", "0:0"),
    "dpu-agent": Component("dpu-agent", f"{UID}:{GID}"),
}


class ImageBuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def project_version(repo: Path = REPO) -> str:
    with (repo / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def dependencies(repo: Path = REPO) -> list[str]:
    with (repo / "pyproject.toml").open("rb") as f:
        return [str(d) for d in tomllib.load(f)["project"]["dependencies"]]


def image_ref(component: str, version: str | None = None) -> str:
    return f"{REGISTRY}/conspirator-{component}:{version or project_version()}"


def _sh(argv: Sequence[str | Path], timeout: float = 600, env: dict[str, str] | None = None,
        ) -> str:
    """Run ``argv`` from / (never the checkout: its operator/ shadows the standard library
    for ``python -m``)."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False, cwd="/")
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(str(a) for a in argv)} failed ({proc.returncode}):\n"
                              f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def _chroot(root: Path, *argv: str, user: str = "", timeout: float = 600) -> str:
    """Run ``argv`` inside ``root`` (as ``user``).  A /dev/null is made first: programs
    redirecting to it would otherwise leave a file there (devices never enter a layer)."""
    null = root / "dev" / "null"
    if not null.exists():
        null.parent.mkdir(exist_ok=True)
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(null, 0o666)
    env = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HOME": WORKDIR if user else "/root", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    spec = [f"--userspec={user}"] if user else []
    return _sh(["chroot", *spec, root, *argv], timeout=timeout, env=env)


def _hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def source_files(repo: Path = REPO) -> list[Path]:
    """The files the project's wheel is built from (SOURCE_PATHS, no build leftovers)."""
    out: list[Path] = []
    for name in SOURCE_PATHS:
        p = repo / name
        if p.is_file():
            out.append(p)
            continue
        for f in sorted(p.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".so"):
                out.append(f)
    return out


def sources_hash(repo: Path = REPO) -> str:
    h = hashlib.sha256()
    for f in source_files(repo):
        rel = f.relative_to(repo).as_posix().encode()
        data = f.read_bytes()
        h.update(len(rel).to_bytes(8, "big") + rel + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def _python_tag() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def dockerfile_python(dockerfile: Path = DOCKERFILE) -> str:
    """The Python version of the Dockerfile's base image (``ARG PYTHON_IMAGE=python:3.11-...``).
    """
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.split(":", 1)[1].split("-", 1)[0]
    raise ImageBuildError(f"no ARG PYTHON_IMAGE in {dockerfile}")


def check_interpreter() -> None:
    """The local images carry the interpreter running this module: the Dockerfile's version."""
    want = dockerfile_python()
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if have != want or sys.implementation.name != "cpython":
        raise ImageBuildError(f"the images are built with the running interpreter, which must "
                              f"be CPython {want} as in images/Dockerfile (this is "
                              f"{sys.implementation.name} {have}: run with a {want} venv)")


# ---- stage 1: the OS ------------------------------------------------------------------------

def _clean_rootfs(root: Path) -> None:
    """What no image needs: package caches and lists, logs, docs, devices (the runtime makes
    /dev), the host's resolv.conf and hostname (the kubelet mounts its own)."""
    for pattern in ("var/cache/apt/*", "var/lib/apt/lists/*", "var/log/*", "usr/share/doc/*",
                    "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
                    "usr/share/lintian/*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old",
                    "dev/*", "tmp/*", "var/tmp/*", "root/.cache", "etc/resolv.conf",
                    "etc/hostname", "etc/hosts"):
        for p in root.glob(pattern):
            if p.name == "locale.alias":
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for d in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        (root / d).mkdir(parents=True, exist_ok=True)


def _os_key() -> str:
    return _hash("os", BUILDER_VERSION, SUITE, ",".join(RUNTIME_PACKAGES), str(UID),
                 DPKG_EXCLUDES)


def _build_os(stage: Path) -> oci.Layer:
    root = stage / "rootfs"
    if shutil.which("debootstrap") is None:
        log("installing debootstrap (apt-get)")
        # A fresh machine may have no package lists yet (CI): update first, as host.py does.
        _sh(["apt-get", "update", "-qq"], timeout=600)
        _sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"],
            timeout=600)
    log(f"debootstrap --variant=minbase {SUITE} (+ {len(RUNTIME_PACKAGES)} runtime packages)")
    _sh(["debootstrap", "--variant=minbase", f"--include={','.join(RUNTIME_PACKAGES)}",
         SUITE, root, MIRROR], timeout=1800)
    _chroot(root, "groupadd", "--gid", str(GID), USER_NAME)
    _chroot(root, "useradd", "--uid", str(UID), "--gid", str(GID), "--home-dir", WORKDIR,
            "--create-home", "--shell", "/usr/sbin/nologin", USER_NAME)
    excludes = root / "etc/dpkg/dpkg.cfg.d/excludes"
    excludes.write_text(DPKG_EXCLUDES)
    _clean_rootfs(root)
    log("packing the os layer")
    return oci.layer_from_tree(root, stage / "layer.tar.gz", created_by=(
        f"debootstrap --variant=minbase {SUITE} + {' '.join(RUNTIME_PACKAGES)}; "
        f"useradd --uid {UID} {USER_NAME}"))


# ---- stage 2: the Python runtime and the dependencies ---------------------------------------

def _python_key(os_key: str) -> str:
    return _hash("python", BUILDER_VERSION, os_key, sys.version, sys.base_prefix,
                 "\n".join(dependencies()), CONSTRAINTS.read_text(), ",".join(PYTHON_EXCLUDE))


def _copy_python(root: Path) -> None:
    """The interpreter of ``sys.base_prefix`` into /usr/local, as the official image has it."""
    base = Path(sys.base_prefix)
    tag = _python_tag()
    local = root / "usr/local"
    for d in ("bin", "lib", f"lib/{tag}/site-packages"):
        (local / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(base / "bin" / tag, local / "bin" / tag)
    for link in ("python3", "python"):
        (local / "bin" / link).symlink_to(tag)
    for lib in sorted((base / "lib").glob(f"lib{tag}*.so*")):
        if lib.is_symlink():
            (local / "lib" / lib.name).symlink_to(os.readlink(lib))
        else:
            shutil.copy2(lib, local / "lib" / lib.name)

    src = base / "lib" / tag

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(src).as_posix()
        out = set()
        for n in names:
            path = n if rel == "." else f"{rel}/{n}"
            if (path in PYTHON_EXCLUDE or n == "__pycache__" or n.endswith((".pyc", ".a"))
                    or n.startswith("_tkinter")):
                out.add(n)
        return out

    shutil.copytree(src, local / "lib" / tag, symlinks=True, ignore=ignore,
                    dirs_exist_ok=True)


def _pip_wheel() -> Path:
    """pip itself, run from its wheel (the interpreter's bundled one) so the image holds none."""
    bundled = sorted((Path(sys.base_prefix) / "lib" / _python_tag() / "ensurepip" /
                      "_bundled").glob("pip-*.whl"))
    if not bundled:
        raise ImageBuildError(f"no bundled pip wheel under {sys.base_prefix}")
    return bundled[-1]


def _pip_install(root: Path, wheels: Sequence[Path]) -> None:
    """pip install, by the image's own interpreter inside the root file system."""
    tmp = root / "tmp" / "conspirator-build"
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy2(_pip_wheel(), tmp / "pip.whl")
    for w in wheels:
        shutil.copy2(w, tmp / w.name)
    _chroot(root, f"/usr/local/bin/{_python_tag()}", "/tmp/conspirator-build/pip.whl/pip",
            "install", "--no-cache-dir", "--no-compile", "--no-index", "--no-deps",
            "--disable-pip-version-check", "--root-user-action=ignore",
            *(f"/tmp/conspirator-build/{w.name}" for w in wheels), timeout=900)
    shutil.rmtree(tmp)
    shutil.rmtree(root / "root" / ".cache", ignore_errors=True)


def _compile(root: Path, *dirs: str) -> None:
    """Byte code ahead of time (unchecked hashes: the image never changes, and mtimes are 0 in
    its layers), by this same interpreter, with paths as the image sees them."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    _sh([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
         "unchecked-hash", "-s", str(root), "-p", "/", *(str(root / d.lstrip("/"))
                                                      for d in dirs)],
        timeout=900, env=env)


def _strip_tests(site: Path) -> None:
    for d in sorted(site.rglob("*"), reverse=True):
        if d.is_dir() and not d.is_symlink() and d.name in ("tests", "test", "__pycache__"):
            shutil.rmtree(d)


def _check_libraries(root: Path) -> None:
    out = _chroot(root, "sh", "-c", "find /usr/local -type f -name '*.so*' -exec ldd {} + "
                  "2>&1; ldd /usr/local/bin/python3")
    missing = sorted({line.strip() for line in out.splitlines() if "not found" in line})
    if missing:
        raise ImageBuildError("shared libraries missing from the image (add their Debian "
                              f"packages to RUNTIME_PACKAGES): {missing}")


def _build_python(stage: Path, os_stage: Path) -> oci.Layer:
    root = stage / "rootfs"
    _sh(["cp", "-a", "--reflink=auto", os_stage / "rootfs", root])
    before = oci.snapshot(root)
    log(f"python {sys.version.split()[0]} from {sys.base_prefix} into /usr/local")
    _copy_python(root)
    _chroot(root, "ldconfig")
    wheels = stage / "wheels"
    log("pip wheel: the dependencies of pyproject.toml")
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
         "--wheel-dir", wheels, "-c", CONSTRAINTS, *dependencies()], timeout=1800)
    _pip_install(root, sorted(wheels.glob("*.whl")))
    site = f"usr/local/lib/{_python_tag()}/site-packages"
    _strip_tests(root / site)
    log("compiling byte code")
    _compile(root, f"usr/local/lib/{_python_tag()}")
    _check_libraries(root)
    _chroot(root, "python3", "-c", "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, "
            "decimal, numpy, highspy, grpc, google.protobuf, kubernetes.config, kopf, "
            "pydantic, yaml, prometheus_client, pynvml, rich, matplotlib", user=f"{UID}:{GID}")
    shutil.rmtree(wheels)
    changed, deleted = oci.changes(before, root)
    log(f"packing the python layer ({len(changed)} paths)")
    return oci.layer_from_tree(root, stage / "layer.tar.gz", changed, deleted,
                               created_by=f"{_python_tag()} in /usr/local; pip install "
                               "the dependencies of pyproject.toml")


# ---- stage 3: the project -------------------------------------------------------------------

def build_wheel(out_dir: Path, repo: Path = REPO) -> Path:
    """The project's wheel from SOURCE_PATHS (copied away from the shared checkout), with the
    C extension: a wheel without ``conspirator/_native*.so`` is refused."""
    with tempfile.TemporaryDirectory(prefix="conspirator-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for f in source_files(repo):
            dst = src / f.relative_to(repo)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
        _sh([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
             "--no-deps", "--wheel-dir", out_dir, src], timeout=900)
    wheels = sorted(out_dir.glob("conspirator-*.whl"))
    if len(wheels) != 1:
        raise ImageBuildError(f"expected one conspirator wheel in {out_dir}: {wheels}")
    names = zipfile.ZipFile(wheels[0]).namelist()
    if not any(n.startswith("conspirator/_native.") and n.endswith(".so") for n in names):
        raise ImageBuildError("conspirator._native was not built (is gcc installed?)")
    return wheels[0]


def _build_app(stage: Path, python_stage: Path) -> oci.Layer:
    root = stage / "rootfs"
    if root.exists():
        shutil.rmtree(root)
    log("pip wheel: the project")
    wheel = build_wheel(stage / "wheel")
    _sh(["cp", "-a", "--reflink=auto", python_stage / "rootfs", root])
    before = oci.snapshot(root)
    _pip_install(root, [wheel])
    _compile(root, f"usr/local/lib/{_python_tag()}/site-packages/conspirator")
    for c in COMPONENTS.values():
        _chroot(root, *c.entrypoint, "--help", user=c.user)
    _chroot(root, "python3", "-c", "import conspirator._native", user=f"{UID}:{GID}")
    changed, deleted = oci.changes(before, root)
    layer = oci.layer_from_tree(root, stage / "layer.tar.gz", changed, deleted,
                                created_by=f"pip install {wheel.name}")
    shutil.rmtree(root)
    shutil.rmtree(stage / "wheel")
    return layer


# ---- the stages, cached -------------------------------------------------------------------------

def _stage(cache: Path, kind: str, key: str, build: Callable[[Path], oci.Layer]
           ) -> tuple[Path, oci.Layer]:
    """The cached stage ``<kind>-<key>`` (built when absent; others of its kind removed)."""
    stage = cache / f"{kind}-{key}"
    record = stage / "layer.json"
    if record.exists():
        return stage, oci.Layer.from_json(json.loads(record.read_text()))
    for old in cache.glob(f"{kind}-*"):
        shutil.rmtree(old, ignore_errors=True)
    stage.mkdir(parents=True)
    t = time.monotonic()
    try:
        layer = build(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    record.write_text(json.dumps(layer.to_json(), indent=1))
    log(f"{kind} layer {layer.digest[:19]} {layer.size / 2**20:.1f} MiB "
        f"({time.monotonic() - t:.0f} s)")
    return stage, layer


def product_images(layers: Sequence[oci.Layer], version: str) -> list[oci.Image]:
    """The three images over ``layers``: one config each, as the Dockerfile's targets."""
    return [oci.Image(
        name=image_ref(c.name, version), layers=layers, entrypoint=c.entrypoint, env=ENV,
        workdir=WORKDIR, user=c.user,
        labels={"org.opencontainers.image.title": f"conspirator-{c.name}",
                "org.opencontainers.image.version": version},
    ) for c in COMPONENTS.values()]


def build_product_archive(paths: Paths) -> tuple[Path, dict[str, str]]:
    """Build (or find cached) the archive of the three images: (its path, refs by component).

    Needs root (debootstrap, chroot), apt and the network on a cold cache; a warm cache with
    unchanged sources costs the hashing of the sources."""
    if os.geteuid() != 0:
        raise ImageBuildError("building the product images needs root (debootstrap, chroot)")
    check_interpreter()
    cache = paths.cache / "images" / "product"
    cache.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache (the e2e lock covers test sessions, not the CLI).
    with (cache.parent / "product.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_product_archive(cache)


def _build_product_archive(cache: Path) -> tuple[Path, dict[str, str]]:
    version = project_version()
    os_key = _os_key()
    os_stage, os_layer = _stage(cache, "os", os_key, _build_os)
    py_key = _python_key(os_key)
    py_stage, py_layer = _stage(cache, "python", py_key,
                                lambda s: _build_python(s, os_stage))
    app_key = _hash("app", py_key, sources_hash())
    _, app_layer = _stage(cache, "app", app_key, lambda s: _build_app(s, py_stage))
    images = product_images([os_layer, py_layer, app_layer], version)
    archive_key = _hash("archive", *(oci.image_config(i).decode() for i in images),
                        *(i.name for i in images))
    archive = cache / f"conspirator-{version}-{archive_key}.tar"
    digests_file = archive.with_suffix(".json")
    if not digests_file.exists():
        for old in cache.glob("conspirator-*.*"):
            old.unlink()
        t = time.monotonic()
        digests = oci.write_images(images, archive)
        digests_file.write_text(json.dumps(digests, indent=1))
        log(f"wrote {archive} ({archive.stat().st_size / 2**20:.0f} MiB, "
            f"{time.monotonic() - t:.0f} s)")
    refs = {c: image_ref(c, version) for c in COMPONENTS}
    return archive, refs


def _imported(cluster: LocalCluster, archive: Path) -> bool:
    """Whether containerd already holds every image of ``archive`` at its manifest digest."""
    digests = json.loads(archive.with_suffix(".json").read_text())
    proc = cluster.ctr("images", "ls", check=False, timeout=30)
    have = {tuple(line.split()[:3:2]) for line in proc.stdout.splitlines()[1:]}
    return all((name, digest) in have for name, digest in digests.items())


def build_product_images(cluster: LocalCluster) -> dict[str, str]:
    """Build the three images if not cached, import them into the real node's containerd
    (``ctr -n k8s.io images import``); return their refs by component name."""
    archive, refs = build_product_archive(cluster.paths)
    if not _imported(cluster, archive):
        t = time.monotonic()
        cluster.ctr("images", "import", str(archive), timeout=600)
        log(f"imported {', '.join(refs.values())} ({time.monotonic() - t:.1f} s)")
    return refs


def main(argv: Sequence[str] | None = None) -> int:
    """``e2e/cluster.sh images``: the test images' and the product images' archives, one path a
    line (kind.sh loads each); with the cluster up, the product images are imported too."""
    from conspirator_e2e.cluster import ClusterError, LocalCluster

    parser = argparse.ArgumentParser(prog="e2e/cluster.sh images", description=main.__doc__)
    parser.add_argument("--no-product", action="store_true",
                        help="only the e2e test images (pause, hello)")
    args = parser.parse_args(argv)
    cluster = LocalCluster()
    try:
        for tar in cluster.build_images():
            print(tar, flush=True)
        if args.no_product:
            return 0
        if os.geteuid() != 0:
            log("not root: the product images are not built (they need debootstrap and "
                "chroot); with Docker, build them from images/Dockerfile (images/README.md)")
            return 0
        archive, refs = build_product_archive(cluster.paths)
        print(archive, flush=True)
        if cluster.is_up():
            build_product_images(cluster)
        for component, ref in refs.items():
            log(f"{component}: {ref}")
    except (ImageBuildError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
