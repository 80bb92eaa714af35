"""Generate the Python stubs of the kubelet device plugin API: ``conspirator gen-protos``.

One command makes every generated file, with the pinned ``grpcio-tools`` (its bundled
``protoc`` and gRPC plugin) and ``mypy-protobuf`` (typed ``.pyi`` stubs), so that the
committed stubs are reproducible; ``tests/deviceplugin/test_protos.py`` regenerates them
into a temporary directory and fails when the committed ones differ.

The ``.proto`` is compiled as ``conspirator/deviceplugin/v1beta1/api.proto`` (a temporary
include root with that layout), so that the generated modules import each other by their
installed names (``from conspirator.deviceplugin.v1beta1 import api_pb2``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

PROTO_PACKAGE = Path("conspirator/deviceplugin/v1beta1")
PROTO_NAME = "api.proto"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")
DEFAULT_SRC = Path("deviceplugin/v1beta1")


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
        (root / PROTO_PACKAGE).mkdir(parents=True)
        gen.mkdir()
        shutil.copyfile(proto, root / PROTO_PACKAGE / PROTO_NAME)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={root}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            str(PROTO_PACKAGE / PROTO_NAME),
        ]
        code = protoc.main(args)
        if code != 0:
            raise ProtoGenError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            produced = gen / PROTO_PACKAGE / name
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
    src = Path(args.src)
    try:
        if args.check:
            bad = stale(src)
            if bad:
                print(f"stale generated stubs in {src}: {', '.join(bad)}", file=sys.stderr)
                return 1
            print(f"generated stubs in {src} are up to date")
            return 0
        for path in generate(src, Path(args.out) if args.out else src):
            print(path)
    except ProtoGenError as exc:
        print(f"conspirator gen-protos: error: {exc}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "gen-protos",
        help="generate the kubelet device plugin API stubs (pinned grpcio-tools)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--src",
        default=str(DEFAULT_SRC),
        help="directory holding api.proto, where the stubs are written (default: %(default)s)",
    )
    p.add_argument("--out", default=None, help="write the stubs here instead of --src")
    p.add_argument(
        "--check", action="store_true", help="exit 1 when the stubs in --src are stale"
    )
    p.set_defaults(func=_run)
