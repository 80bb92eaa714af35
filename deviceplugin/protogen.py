"""Generate the Python stubs of the gRPC APIs: ``conspirator gen-protos``.

Five APIs: the kubelet's four, the device plugin API v1beta1 (``deviceplugin/v1beta1``),
the PodResources API v1 (``deviceplugin/podresources/v1``), and the DRA driver's two, the
DRA plugin API v1 (``deviceplugin/dra/v1``) and the plugin registration API
(``deviceplugin/dra/registration``); and the KServe / Triton Open Inference Protocol v2
(``conspirator/oip/v2/grpc_predict_v2.proto``, package ``inference``), which the DPU agent
serves and ``conspirator loadgen --protocol oip`` speaks (in the core, so that both reach
it).  Each directory holds one ``.proto``.  One command makes every generated file, with the
pinned ``grpcio-tools`` (its bundled ``protoc`` and gRPC plugin) and ``mypy-protobuf`` (typed
``.pyi`` stubs), so that the committed stubs are reproducible;
``tests/deviceplugin/test_protos.py`` regenerates them into a temporary directory and fails
when the committed ones differ.

Each ``.proto`` is compiled under its installed package path (``deviceplugin/v1beta1`` ->
``conspirator/deviceplugin/v1beta1/api.proto``, ``conspirator/oip/v2`` as it is; a temporary
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

SOURCES = (
    Path("deviceplugin/v1beta1"),
    Path("deviceplugin/podresources/v1"),
    Path("deviceplugin/dra/v1"),
    Path("deviceplugin/dra/registration"),
    Path("conspirator/oip/v2"),
)
DEFAULT_SRC = SOURCES[0]


def generated_names(stem: str) -> tuple[str, ...]:
    """What protoc makes of ``<stem>.proto`` (messages, gRPC stubs, and their .pyi)."""
    return (f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py", f"{stem}_pb2_grpc.pyi")


GENERATED = generated_names("api")


def proto_file(src_dir: Path) -> Path:
    """The one ``.proto`` of a source directory."""
    protos = sorted(src_dir.glob("*.proto"))
    if len(protos) != 1:
        raise ProtoGenError(f"{src_dir} holds {len(protos)} .proto files, not one "
                            "(run from the repository root or give --src)")
    return protos[0]


def _last(parts: tuple[str, ...], name: str) -> int:
    return len(parts) - 1 - parts[::-1].index(name) if name in parts else -1


def proto_package(src_dir: Path) -> Path:
    """The installed package path of a source directory: ``.../deviceplugin/v1beta1`` ->
    ``conspirator/deviceplugin/v1beta1``, ``.../conspirator/oip/v2`` as it is (the
    directory-to-package mapping of pyproject)."""
    parts = src_dir.resolve().parts
    dp, core = _last(parts, "deviceplugin"), _last(parts, "conspirator")
    if dp > core:
        return Path("conspirator", *parts[dp:])
    if core >= 0:
        return Path(*parts[core:])
    raise ProtoGenError(f"{src_dir} is not under deviceplugin/ or conspirator/")


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
    """Compile ``src_dir``'s ``.proto``; write the generated files into ``out_dir``."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ProtoGenError("grpcio-tools is missing: pip install 'conspirator[test]'") from exc
    proto = proto_file(src_dir)
    with tempfile.TemporaryDirectory(prefix="conspirator-protos-") as tmp:
        root = Path(tmp) / "in"
        gen = Path(tmp) / "out"
        package = proto_package(src_dir)
        (root / package).mkdir(parents=True)
        gen.mkdir()
        shutil.copyfile(proto, root / package / proto.name)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={root}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            str(package / proto.name),
        ]
        code = protoc.main(args)
        if code != 0:
            raise ProtoGenError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in generated_names(proto.stem):
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
        for name in generated_names(proto_file(src_dir).stem):
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
             "API stubs and the Open Inference Protocol's (pinned grpcio-tools)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--src", action="append",
        help="directory holding one .proto, where the stubs are written (repeatable; "
             f"default: {', '.join(str(s) for s in SOURCES)})",
    )
    p.add_argument("--out", default=None, help="write the stubs here instead of --src")
    p.add_argument(
        "--check", action="store_true", help="exit 1 when the stubs in --src are stale"
    )
    p.set_defaults(func=_run)
