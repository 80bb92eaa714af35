"""The committed device plugin stubs are what the pinned grpcio-tools generates from api.proto."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grpc
import pytest

from conspirator.deviceplugin import protogen
from conspirator.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "deviceplugin" / "v1beta1"


def test_committed_stubs_are_fresh() -> None:
    assert protogen.stale(SRC) == [], (
        "the generated stubs differ from api.proto: run `conspirator gen-protos` "
        "from the repository root and commit the result")


def test_cli_check(capsys: pytest.CaptureFixture[str]) -> None:
    from conspirator.cli import main

    assert main(["gen-protos", "--src", str(SRC), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_pins_agree() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in [*deps["dependencies"], *deps["optional-dependencies"]["test"]]
            if d.startswith(("grpcio==", "grpcio-tools=="))]
    versions = {d.split("==")[1] for d in pins}
    assert len(pins) == 2 and len(versions) == 1, pins
    assert api_pb2_grpc.GRPC_GENERATED_VERSION in versions
    assert grpc.__version__ in versions


def test_wire_names_are_the_kubelets() -> None:
    d = api_pb2.DESCRIPTOR
    assert d.package == "v1beta1"
    assert set(d.services_by_name) == {"Registration", "DevicePlugin"}
    methods = {m.name for m in d.services_by_name["DevicePlugin"].methods}
    assert methods == {"GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation",
                       "Allocate", "PreStartContainer"}
    fields = {f.name: f.number for f in api_pb2.ContainerAllocateResponse.DESCRIPTOR.fields}
    assert fields == {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}


def test_pod_resources_stubs_are_fresh_and_the_kubelets() -> None:
    from conspirator.deviceplugin.podresources.v1 import api_pb2 as pr

    assert protogen.stale(ROOT / "deviceplugin" / "podresources" / "v1") == [], (
        "the PodResources stubs differ from api.proto: run `conspirator gen-protos`")
    d = pr.DESCRIPTOR
    assert d.package == "v1"
    methods = {m.name for m in d.services_by_name["PodResourcesLister"].methods}
    assert {"List", "GetAllocatableResources"} <= methods
    numbers = {f.name: f.number for f in pr.ContainerDevices.DESCRIPTOR.fields}
    assert numbers == {"resource_name": 1, "device_ids": 2, "topology": 3}
    numbers = {f.name: f.number for f in pr.PodResources.DESCRIPTOR.fields}
    assert numbers == {"name": 1, "namespace": 2, "containers": 3}


@pytest.mark.parametrize("src", ["deviceplugin/dra/v1", "deviceplugin/dra/registration"])
def test_dra_stubs_are_fresh(src: str) -> None:
    assert protogen.stale(ROOT / src) == [], (
        f"the stubs in {src} differ from api.proto: run `conspirator gen-protos`")


def test_every_proto_source_is_generated_by_default() -> None:
    protos = {p.parent.relative_to(ROOT)
              for d in ("deviceplugin", "conspirator") for p in (ROOT / d).rglob("*.proto")}
    assert protos == set(protogen.SOURCES)


def test_oip_stubs_are_fresh_and_the_protocols() -> None:
    """The Open Inference Protocol v2: KServe's grpc_predict_v2.proto, whose messages are
    Triton's too (the same service path and field numbers on the wire)."""
    from conspirator.oip.v2 import grpc_predict_v2_pb2 as oip
    from conspirator.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc

    src = ROOT / "conspirator" / "oip" / "v2"
    assert protogen.stale(src) == [], (
        "the OIP stubs differ from grpc_predict_v2.proto: run `conspirator gen-protos`")
    assert grpc.__version__ == oip_grpc.GRPC_GENERATED_VERSION
    d = oip.DESCRIPTOR
    assert d.package == "inference"
    assert {m.full_name for m in d.services_by_name["GRPCInferenceService"].methods} == {
        f"inference.GRPCInferenceService.{m}" for m in (
            "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelInfer")}
    numbers = {f.name: f.number for f in oip.ModelInferRequest.DESCRIPTOR.fields}
    assert numbers == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                       "inputs": 5, "outputs": 6, "raw_input_contents": 7}
    numbers = {f.name: f.number for f in oip.ModelInferResponse.DESCRIPTOR.fields}
    assert numbers == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                       "outputs": 5, "raw_output_contents": 6}
    numbers = {f.name: f.number
               for f in oip.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields}
    assert numbers == {"name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5}
    numbers = {f.name: f.number for f in oip.InferTensorContents.DESCRIPTOR.fields}
    assert numbers == {"bool_contents": 1, "int_contents": 2, "int64_contents": 3,
                       "uint_contents": 4, "uint64_contents": 5, "fp32_contents": 6,
                       "fp64_contents": 7, "bytes_contents": 8}
    numbers = {f.name: f.number for f in oip.InferParameter.DESCRIPTOR.fields}
    assert numbers == {"bool_param": 1, "int64_param": 2, "string_param": 3}
    assert {f.name: f.number for f in oip.ModelReadyRequest.DESCRIPTOR.fields} == {
        "name": 1, "version": 2}


def test_gen_protos_refuses_a_directory_without_one_proto(tmp_path: Path) -> None:
    bad = tmp_path / "conspirator" / "nothing"
    bad.mkdir(parents=True)
    with pytest.raises(protogen.ProtoGenError, match=r"0 \.proto files"):
        protogen.generate(bad, tmp_path / "out")
    assert protogen.proto_package(ROOT / "conspirator" / "oip" / "v2") == \
        Path("conspirator/oip/v2")
    assert protogen.proto_package(ROOT / "deviceplugin" / "v1beta1") == \
        Path("conspirator/deviceplugin/v1beta1")


def test_dra_wire_names_are_the_kubelets() -> None:
    from conspirator.deviceplugin.dra.registration import api_pb2 as reg
    from conspirator.deviceplugin.dra.v1 import api_pb2 as dra

    d = dra.DESCRIPTOR
    assert d.package == "k8s.io.kubelet.pkg.apis.dra.v1"
    service = d.services_by_name["DRAPlugin"]
    assert {m.full_name for m in service.methods} == {
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin.NodePrepareResources",
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin.NodeUnprepareResources"}
    numbers = {f.name: f.number for f in dra.Device.DESCRIPTOR.fields}
    assert numbers == {"request_names": 1, "pool_name": 2, "device_name": 3,
                       "cdi_device_ids": 4, "share_id": 5}
    assert dra.Device.DESCRIPTOR.fields_by_name["share_id"].has_presence
    numbers = {f.name: f.number for f in dra.Claim.DESCRIPTOR.fields}
    assert numbers == {"namespace": 1, "uid": 2, "name": 3}
    numbers = {f.name: f.number for f in dra.NodePrepareResourceResponse.DESCRIPTOR.fields}
    assert numbers == {"devices": 1, "error": 2}
    numbers = {f.name: f.number for f in dra.NodeUnprepareResourceResponse.DESCRIPTOR.fields}
    assert numbers == {"error": 1}

    r = reg.DESCRIPTOR
    assert r.package == "pluginregistration"
    assert {m.name for m in r.services_by_name["Registration"].methods} == {
        "GetInfo", "NotifyRegistrationStatus"}
    numbers = {f.name: f.number for f in reg.PluginInfo.DESCRIPTOR.fields}
    assert numbers == {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4}
    numbers = {f.name: f.number for f in reg.RegistrationStatus.DESCRIPTOR.fields}
    assert numbers == {"plugin_registered": 1, "error": 2}
