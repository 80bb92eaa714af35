"""Generate the Python stubs of the kubelet APIs: ``conspirator gen-protos``.

Four APIs: the device plugin API v1beta1 (``deviceplugin/v1beta1``), the PodResources API
v1 (``deviceplugin/podresources/v1``), and the DRA driver's two, the DRA plugin API v1
(``deviceplugin/dra/v1``) and the plugin registration API
(``deviceplugin/dra/registration``).  One command makes every generated file, with the
pinned ``grpcio-tools`` (its bundled ``protoc`` and gRPC plugin) and ``mypy-protobuf`` (typed
``.pyi`` stubs), so that the committed stubs are reproducible;
``tests/deviceplugin/test_protos.py`` regenerates them into a temporary directory and fails
when the committed ones differ.

Each ``.proto`` is compiled as ``conspirator/<its directory>/api.proto`` (a temporary include
root with that layout), so that the generated modules import each other by their installed
names (``from conspirator.deviceplugin.v1beta1 import api_pb2``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

PROTO_NAME = "api.proto"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")
SOURCES = (
    Path("deviceplugin/v1beta1"),
    Path("deviceplugin/podresources/v1"),
    Path("deviceplugin/dra/v1"),
    Path("deviceplugin/dra/registration"),
)
DEFAULT_SRC = SOURCES[0]


def proto_package(src_dir: Path) -> Path:
    """The installed package path of a source directory: ``.../deviceplugin/v1beta1`` ->
    ``conspirator/deviceplugin/v1beta1`` (the directory-to-package mapping of pyproject)."""
    parts = src_dir.resolve().parts
    if "deviceplugin" not in parts:
        raise ProtoGenError(f"{src_dir} is not under deviceplugin/")
    i = len(parts) - 1 - parts[::-1].index("deviceplugin")
    return Path("conspirator", *parts[i:])


class ProtoGenError(RuntimeError):
    pass


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this interpreter (or on PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ProtoGenError(f"{name} not found: pip install 'conspirator[test]' (mypy-protobuf)")
    return found


def generate(src_dir: Path, out_dir: Path) -> list[Path]:
    """Compile ``src_dir/api.proto``; write the generated files into ``out_dir``."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ProtoGenError("grpcio-tools is missing: pip install 'conspirator[test]'") from exc
    proto = src_dir / PROTO_NAME
    if not proto.is_file():
        raise ProtoGenError(f"{proto} not found (run from the repository root or give --src)")
    with tempfile.TemporaryDirectory(prefix="conspirator-protos-") as tmp:
        root = Path(tmp) / "in"
        gen = Path(tmp) / "out"
        package = proto_package(src_dir)
        (root / package).mkdir(parents=True)
        gen.mkdir()
        shutil.copyfile(proto, root / package / PROTO_NAME)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={root}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            str(package / PROTO_NAME),
        ]
        code = protoc.main(args)
        if code != 0:
            raise ProtoGenError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            produced = gen / package / name
            if not produced.exists():
                raise ProtoGenError(f"protoc did not produce {name}")
            shutil.copyfile(produced, out_dir / name)
            written.append(out_dir / name)
        return written


def stale(src_dir: Path) -> list[str]:
    """Names of the generated files in ``src_dir`` that differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="conspirator-protos-check-") as tmp:
        generate(src_dir, Path(tmp))
        out = []
        for name in GENERATED:
            committed = src_dir / name
            fresh = Path(tmp) / name
            if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
                out.append(name)
        return out


def _run(args: argparse.Namespace) -> int:
    sources = [Path(s) for s in args.src] if args.src else list(SOURCES)
    if args.out and len(sources) != 1:
        print("conspirator gen-protos: error: --out needs exactly one --src", file=sys.stderr)
        return 2
    code = 0
    try:
        for src in sources:
            if args.check:
                bad = stale(src)
                if bad:
                    print(f"stale generated stubs in {src}: {', '.join(bad)}",
                          file=sys.stderr)
                    code = 1
                else:
                    print(f"generated stubs in {src} are up to date")
                continue
            for path in generate(src, Path(args.out) if args.out else src):
                print(path)
    except ProtoGenError as exc:
        print(f"conspirator gen-protos: error: {exc}", file=sys.stderr)
        return 2
    return code


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "gen-protos",
        help="generate the kubelet device plugin, PodResources, DRA and plugin registration "
             "API stubs (pinned grpcio-tools)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--src", action="append",
        help="directory holding api.proto, where the stubs are written (repeatable; "
             f"default: {', '.join(str(s) for s in SOURCES)})",
    )
    p.add_argument("--out", default=None, help="write the stubs here instead of --src")
    p.add_argument(
        "--check", action="store_true", help="exit 1 when the stubs in --src are stale"
    )
    p.set_defaults(func=_run)
