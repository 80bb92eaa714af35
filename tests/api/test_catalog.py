"""The API's GPU and MIG names agree with the placement engine's catalog.

The API may not import the engine (DESIGN section 2); this test, which may,
keeps the two in step.
"""

from __future__ import annotations

import re

from conspirator.api.v1alpha1 import MIG_CAPABLE_MODELS, WHOLE, GPUModel, valid_start
from conspirator.api.v1alpha1.common import MIG_PROFILE, PROFILE_OR_WHOLE
from conspirator.operator.placement import gpus

from .helpers import EXAMPLES, load_yaml


def test_gpu_models_are_in_the_catalog() -> None:
    catalog = gpus.catalog()
    for model in GPUModel:
        assert model.value in catalog, f"API GPU model {model.value} unknown to the engine"
        assert catalog[model.value].mig_capable == (model in MIG_CAPABLE_MODELS), model


def test_every_mig_model_of_the_catalog_is_in_the_api() -> None:
    names = {m.value for m in GPUModel}
    for name, model in gpus.catalog().items():
        if model.mig_capable:
            assert name in names, f"MIG-capable {name} missing from conspirator.api GPUModel"


def test_profile_names_match_the_pattern() -> None:
    assert WHOLE == gpus.WHOLE
    for model in gpus.catalog().values():
        for profile in model.profiles:
            assert re.match(MIG_PROFILE, profile.name), profile.name
        for profile in model.planning_profiles:
            assert re.match(PROFILE_OR_WHOLE, profile.name), profile.name


def test_crd_start_rule_accepts_every_real_placement() -> None:
    for model in gpus.catalog().values():
        for placement in model.placements:
            assert valid_start(placement.profile.name, placement.start), f"{model.name} {placement}"


def test_crd_start_rule_refuses_what_no_model_allows() -> None:
    for model in gpus.catalog().values():
        if model.memory_slices != 8:
            continue
        for profile in model.profiles:
            for start in range(8):
                if valid_start(profile.name, start) and profile.compute_slices > 1:
                    assert start in profile.starts, f"{model.name} {profile.name}@{start}"


def test_example_layouts_are_valid_mig_layouts() -> None:
    node = load_yaml(EXAMPLES / "gpunode.yaml")
    models = {g["index"]: g["model"] for g in node["status"]["gpus"]}
    for gpu in node["spec"]["gpus"]:
        model = gpus.gpu_model(models[gpu["index"]])
        layout = [gpus.Placement(model.profile(i["profile"]), i["start"]) for i in gpu["instances"]]
        gpus.check_layout(model, layout)


def test_example_profile_entries_exist_in_the_catalog() -> None:
    profile = load_yaml(EXAMPLES / "modelprofile-resnet50.yaml")
    for entry in profile["spec"]["entries"]:
        model = gpus.gpu_model(entry["gpuModel"])
        names = {p.name for p in model.planning_profiles}
        assert entry["migProfile"] in names, entry
