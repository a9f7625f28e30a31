"""The Serve, cluster and KubeRay configs parse with Ray's own schemas and keep every
specialist separately scaled."""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from agents.settings import PROJECT_ROOT, ROLES, Settings

CONFIGS = PROJECT_ROOT / "configs"


def serve_configs() -> dict[str, dict]:
    k8s = yaml.safe_load((CONFIGS / "k8s" / "rayservice.yaml").read_text())
    return {
        "local": yaml.safe_load((CONFIGS / "local.yaml").read_text()),
        "production": yaml.safe_load((CONFIGS / "production.yaml").read_text()),
        "k8s": yaml.safe_load(k8s["spec"]["serveConfigV2"]),
    }


@pytest.mark.parametrize("name", ["local", "production", "k8s"])
def test_serve_config_matches_rays_schema(name):
    schema = ServeDeploySchema.model_validate(serve_configs()[name])
    [app] = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"supervisor", *ROLES}
    for role in ROLES:
        auto = deployments[role].autoscaling_config
        assert auto and auto["min_replicas"] <= auto["max_replicas"], role
        assert deployments[role].max_ongoing_requests > 5, "default of 5 collapses throughput"


def test_production_and_k8s_scale_specialists_alike():
    configs = serve_configs()
    prod = {d["name"]: d for d in configs["production"]["applications"][0]["deployments"]}
    k8s = {d["name"]: d for d in configs["k8s"]["applications"][0]["deployments"]}
    for name in prod:
        assert prod[name]["autoscaling_config"] == k8s[name]["autoscaling_config"], name


def test_cluster_launcher_config_has_head_and_workers():
    cluster = yaml.safe_load((PROJECT_ROOT / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert workers and all(t["min_workers"] <= t["max_workers"] for t in workers)


def test_agent_settings_file_names_every_role_and_the_approval_policy():
    settings = Settings()
    assert set(settings.roles) == set(ROLES)
    assert settings.approval.requires_approval("issue_refund", {})
    assert settings.approval.requires_approval("run_python", {"persist": True})
    assert not settings.approval.requires_approval("run_python", {"persist": False})
