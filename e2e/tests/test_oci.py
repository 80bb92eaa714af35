"""The OCI archive writer (conspirator_e2e/oci.py) and the agreement of images/Dockerfile with
the local image build (conspirator_e2e/images.py).  No cluster: these run anywhere."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shlex
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conspirator_e2e import images, oci

REPO = Path(__file__).resolve().parents[2]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tree(root: Path, order: list[str]) -> None:
    """The same tree whatever the creation ``order`` (and mtimes) of its files."""
    root.mkdir()
    (root / "etc").mkdir()
    (root / "usr/bin").mkdir(parents=True)
    (root / "a-b").mkdir()
    files = {"etc/passwd": b"root:x:0:0::/root:/bin/sh\n", "usr/bin/tool": b"#!/bin/sh\n",
             "a-b/x": b"x", "etc/shadow": b"secret"}
    for name in order:
        (root / name).write_bytes(files[name])
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.chmod(root / "etc/shadow", 0o640)
    if os.geteuid() == 0:
        os.chown(root / "etc/shadow", 0, 42)
    os.symlink("usr/bin", root / "bin")
    os.link(root / "usr/bin/tool", root / "usr/bin/tool2")
    os.mkfifo(root / "etc/fifo")


def layer_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getmembers()


def test_layer_from_tree_is_reproducible_and_digests_are_right(tmp_path: Path) -> None:
    make_tree(tmp_path / "one", ["etc/passwd", "usr/bin/tool", "a-b/x", "etc/shadow"])
    make_tree(tmp_path / "two", ["etc/shadow", "a-b/x", "usr/bin/tool", "etc/passwd"])
    os.utime(tmp_path / "two/etc/passwd", (12345, 12345))
    one = oci.layer_from_tree(tmp_path / "one", tmp_path / "one.tar.gz")
    two = oci.layer_from_tree(tmp_path / "two", tmp_path / "two.tar.gz")
    assert (one.digest, one.diff_id, one.size) == (two.digest, two.diff_id, two.size)
    blob = (tmp_path / "one.tar.gz").read_bytes()
    assert one.digest == sha(blob) and one.size == len(blob)
    assert one.diff_id == sha(gzip.decompress(blob))
    assert blob[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    assert blob[3] & 0x08 == 0  # no file name in the gzip header
    # A changed byte changes the digests.
    (tmp_path / "two/a-b/x").write_bytes(b"y")
    three = oci.layer_from_tree(tmp_path / "two", tmp_path / "three.tar.gz")
    assert three.diff_id != one.diff_id and three.digest != one.digest


def test_layer_entries_are_sorted_and_normalised(tmp_path: Path) -> None:
    make_tree(tmp_path / "root", ["etc/passwd", "usr/bin/tool", "a-b/x", "etc/shadow"])
    layer = oci.layer_from_tree(tmp_path / "root", tmp_path / "l.tar.gz")
    assert layer.path is not None
    members = layer_members(layer.path)
    names = [m.name for m in members]
    # A directory before what it holds; siblings by name; the FIFO left out.
    assert names == ["a-b", "a-b/x", "bin", "etc", "etc/passwd", "etc/shadow", "usr",
                     "usr/bin", "usr/bin/tool", "usr/bin/tool2"]
    by = {m.name: m for m in members}
    assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in members)
    assert by["usr/bin/tool"].mode == 0o4755 and by["etc/shadow"].mode == 0o640
    if os.geteuid() == 0:
        assert by["etc/shadow"].gid == 42
    assert by["bin"].issym() and by["bin"].linkname == "usr/bin"
    assert by["usr/bin/tool2"].islnk() and by["usr/bin/tool2"].linkname == "usr/bin/tool"
    assert by["etc"].isdir()


def test_changes_and_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, ["etc/passwd", "usr/bin/tool", "a-b/x", "etc/shadow"])
    (root / "var/lib/old").mkdir(parents=True)
    (root / "var/lib/old/f").write_bytes(b"f")
    before = oci.snapshot(root)
    (root / "usr/local/lib").mkdir(parents=True)
    (root / "usr/local/lib/new.so").write_bytes(b"new")
    (root / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\nu:x:65532:65532::/:/x\n")
    (root / "a-b/x").unlink()
    for p in (root / "var/lib/old").iterdir():
        p.unlink()
    (root / "var/lib/old").rmdir()
    changed, deleted = oci.changes(before, root)
    assert sorted(changed) == ["etc/passwd", "usr/local", "usr/local/lib",
                               "usr/local/lib/new.so"]
    assert deleted == ["a-b/x", "var/lib/old"]  # not var/lib/old/f: the directory covers it
    layer = oci.layer_from_tree(root, tmp_path / "d.tar.gz", changed, deleted)
    assert layer.path is not None
    names = [m.name for m in layer_members(layer.path)]
    assert names == ["a-b", "a-b/.wh.x", "etc", "etc/passwd", "usr", "usr/local",
                     "usr/local/lib", "usr/local/lib/new.so", "var", "var/lib",
                     "var/lib/.wh.old"]
    # Unchanged, nothing to pack.
    assert oci.changes(oci.snapshot(root), root) == ([], [])


def _layer(tmp_path: Path, name: str, content: bytes) -> oci.Layer:
    d = tmp_path / f"tree-{name}"
    (d / name).mkdir(parents=True)
    (d / name / "f").write_bytes(content)
    return oci.layer_from_tree(d, tmp_path / f"{name}.tar.gz", created_by=f"add {name}")


def test_multi_image_archive(tmp_path: Path) -> None:
    base, top = _layer(tmp_path, "base", b"b" * 1000), _layer(tmp_path, "top", b"t")
    imgs = [oci.Image(name=f"example.local/{n}:1.0", layers=[base, top],
                      entrypoint=["tool", n], user=u, env=["A=1"], workdir="/w")
            for n, u in (("one", "65532:65532"), ("two", "0:0"))]
    digests = oci.write_images(imgs, tmp_path / "a.tar")
    oci.write_images(imgs, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()

    with tarfile.open(tmp_path / "a.tar") as tar:
        files = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert sha(data) == "sha256:" + name.rsplit("/", 1)[1]
    # Two configs, two manifests, two layers: the shared layers stored once.
    assert sum(n.startswith("blobs/") for n in files) == 6
    index = json.loads(files["index.json"])
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == \
        ["example.local/one:1.0", "example.local/two:1.0"]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "1.0"
    for desc, image in zip(index["manifests"], imgs, strict=True):
        assert digests[image.name] == desc["digest"]
        manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
        # Layer order is bottom first, as given; config diff_ids in the same order.
        assert [ly["digest"] for ly in manifest["layers"]] == [base.digest, top.digest]
        config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
        assert config["rootfs"]["diff_ids"] == [base.diff_id, top.diff_id]
        assert [h["created_by"] for h in config["history"]] == ["add base", "add top"]
        assert config["config"]["User"] == image.user
        assert config["config"]["Entrypoint"] == list(image.entrypoint)
    index_read, blobs = oci.read_archive(tmp_path / "a.tar")
    assert index_read == index and len(blobs) == 4  # configs and manifests


def test_single_layer_spec_archive_still_reproducible(tmp_path: Path) -> None:
    exe = tmp_path / "hello"
    exe.write_bytes(b"\x7fELF fake")
    spec = oci.ImageSpec(name="conspirator.local/e2e/x:v1", entrypoint=["/hello"],
                         files={"hello": exe}, contents={"etc/motd": b"hi\n"})
    a, b = oci.build_archive(spec), oci.build_archive(spec)
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest_name = "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(tar.extractfile(manifest_name))  # type: ignore[arg-type]
        layer_name = "blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]
        layer = tar.extractfile(layer_name).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as lt:
        members = {m.name: m for m in lt.getmembers()}
    assert members["hello"].mode == 0o755 and members["etc/motd"].mode == 0o644
    assert members["tmp"].mode == 0o1777
    assert oci.write_archive(spec, tmp_path / "x.tar") == index["manifests"][0]["digest"]


# ---- images/Dockerfile and the local build agree ---------------------------------------------

@dataclass
class Stage:
    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    entrypoint: list[str] | None = None
    workdir: str = ""
    copies: list[list[str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def parse_dockerfile(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARGs, stages by name) with ENV, USER, ENTRYPOINT and WORKDIR inherited from a
    stage's base stage, as Docker resolves them."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    cur: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and cur is None:
            k, _, v = rest.partition("=")
            args[k] = v
        elif instr == "FROM":
            words = rest.split()
            base = words[0]
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else base
            cur = Stage(name=name, base=base)
            if base in stages:
                parent = stages[base]
                cur.env, cur.user = dict(parent.env), parent.user
                cur.entrypoint, cur.workdir = parent.entrypoint, parent.workdir
            stages[name] = cur
        elif cur is None:
            raise AssertionError(f"{instr} before FROM")
        elif instr == "ENV":
            for pair in shlex.split(rest):
                k, _, v = pair.partition("=")
                cur.env[k] = v
        elif instr == "USER":
            cur.user = rest.strip()
        elif instr == "ENTRYPOINT":
            cur.entrypoint = json.loads(rest)
        elif instr == "WORKDIR":
            cur.workdir = rest.strip()
        elif instr == "COPY":
            cur.copies.append(rest.split())
        elif instr == "RUN":
            cur.runs.append(rest)
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile(REPO / "images" / "Dockerfile")


# What python:3.11-slim-bookworm's own config sets, which the Dockerfile inherits and the local
# build writes itself.
BASE_IMAGE_ENV = {"PATH", "LANG"}


def test_dockerfile_targets_are_the_components(
        dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    _, stages = dockerfile
    assert set(stages) == {"builder", "runtime", *images.COMPONENTS}
    for name, comp in images.COMPONENTS.items():
        st = stages[name]
        assert st.base == "runtime", name
        assert st.entrypoint == comp.entrypoint == ["conspirator", name]
        assert st.user == comp.user
        assert st.workdir == images.WORKDIR
    assert images.COMPONENTS["node-daemon"].user == "0:0"
    assert {c.user for n, c in images.COMPONENTS.items() if n != "node-daemon"} == {"65532:65532"}


def test_dockerfile_environment_and_user_match_the_local_build(
        dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    _, stages = dockerfile
    local_env = dict(e.split("=", 1) for e in images.ENV)
    for name in images.COMPONENTS:
        assert stages[name].env == {k: v for k, v in local_env.items()
                                    if k not in BASE_IMAGE_ENV}, name
    assert set(local_env) - set(stages["runtime"].env) == BASE_IMAGE_ENV
    runtime_runs = " ".join(stages["runtime"].runs)
    assert f"--uid {images.UID}" in runtime_runs and f"--gid {images.GID}" in runtime_runs
    assert f"--home-dir {images.WORKDIR}" in runtime_runs
    assert f"groupadd --gid {images.GID} {images.USER_NAME}" in runtime_runs
    # The same byte-code mode in both builds.
    assert runtime_runs.count("--invalidation-mode unchecked-hash") == 2


def test_dockerfile_python_matches_its_paths_and_the_builder(
        dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    args, stages = dockerfile
    assert args["PYTHON_IMAGE"].startswith("python:") and "bookworm" in args["PYTHON_IMAGE"]
    assert images.SUITE == "bookworm"
    version = images.dockerfile_python()
    assert re.fullmatch(r"3\.\d+", version)
    paths = set(re.findall(r"/usr/local/lib/python(\d+\.\d+)/", " ".join(stages["runtime"].runs)))
    assert paths == {version}
    assert stages["builder"].base == stages["runtime"].base == "${PYTHON_IMAGE}"


def test_dockerfile_sources_match_the_local_build_and_dockerignore(
        dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    _, stages = dockerfile
    copied: list[str] = []
    for words in stages["builder"].copies:
        copied += [w.rstrip("/") for w in words[:-1]]
    assert sorted(copied) == sorted(images.SOURCE_PATHS)
    admitted = [line[1:].rstrip("/") for line in
                (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert sorted(admitted) == sorted(images.SOURCE_PATHS)
    # Each source path exists, and the package metadata names every source directory.
    with (REPO / "pyproject.toml").open("rb") as f:
        pkg_dirs = set(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    assert pkg_dirs <= set(images.SOURCE_PATHS)
    assert all((REPO / p).exists() for p in images.SOURCE_PATHS)


def test_local_images_config(tmp_path: Path) -> None:
    """The configs the local build writes: one per component, over the same layers."""
    layer = _layer(tmp_path, "x", b"x")
    built = images.product_images([layer], "9.9.9")
    assert [i.name for i in built] == [
        f"conspirator.local/conspirator-{c}:9.9.9" for c in images.COMPONENTS]
    for image in built:
        config: dict[str, Any] = json.loads(oci.image_config(image))["config"]
        component = image.name.split("conspirator-", 1)[1].split(":")[0]
        assert config["Entrypoint"] == ["conspirator", component]
        assert config["User"] == images.COMPONENTS[component].user
        assert config["Env"] == list(images.ENV)
        assert config["WorkingDir"] == images.WORKDIR
    assert images.image_ref("operator") == \
        f"conspirator.local/conspirator-operator:{images.project_version()}"



def test_image_dependency_pins_satisfy_pyproject() -> None:
    """images/constraints.txt (images/lock.py) pins every runtime dependency, within
    pyproject's ranges, once; both image builds install with it."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in images.CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, line
            assert canonicalize_name(name) not in pins, f"{name} pinned twice"
            pins[canonicalize_name(name)] = version
    for dep in images.dependencies():
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in images/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} breaks pyproject's {req.specifier}")
    dockerfile = (REPO / "images" / "Dockerfile").read_text()
    assert "-c images/constraints.txt" in dockerfile
