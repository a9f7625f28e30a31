"""The Serve, cluster and KubeRay configs parse with Ray's own schemas and keep every
specialist separately scaled."""

from __future__ import annotations

import json

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


SPECIALIST_RESOURCE = "specialist_node"  # what worker nodes advertise for specialists


def worker_node_types() -> dict[str, dict]:
    """Per config: node kind -> (custom resources, min, max) of cluster.yaml and the k8s
    RayService (head as its own kind)."""
    cluster = yaml.safe_load((PROJECT_ROOT / "cluster.yaml").read_text())
    k8s = yaml.safe_load((CONFIGS / "k8s" / "rayservice.yaml").read_text())["spec"]
    ray_cluster = k8s["rayClusterConfig"]
    types = cluster["available_node_types"]

    def k8s_resources(params: dict) -> dict:
        return json.loads(json.loads(params["resources"])) if "resources" in params else {}

    return {
        "cluster.yaml": {name: (t["resources"], t["min_workers"], t["max_workers"])
                         for name, t in types.items() if name != cluster["head_node_type"]}
        | {"head": (types[cluster["head_node_type"]]["resources"], 0, 0)},
        "k8s": {g["groupName"]: (k8s_resources(g["rayStartParams"]), g["minReplicas"],
                                 g["maxReplicas"]) for g in ray_cluster["workerGroupSpecs"]}
        | {"head": (k8s_resources(ray_cluster["headGroupSpec"]["rayStartParams"]), 0, 0)},
    }


@pytest.mark.parametrize("name", ["production", "k8s"])
def test_specialists_on_worker_nodes_supervisors_anywhere(name):
    app = serve_configs()[name]["applications"][0]
    deployments = {d["name"]: d["ray_actor_options"] for d in app["deployments"]}
    assert "resources" not in deployments["supervisor"], "supervisors run on every node"
    asks = {deployments[role].get("resources", {}).get(SPECIALIST_RESOURCE) for role in ROLES}
    [ask] = asks
    assert ask and 0 < ask <= 1, asks
    for kind, nodes in worker_node_types().items():
        head_resources, *_ = nodes.pop("head")
        assert SPECIALIST_RESOURCE not in head_resources, kind
        offered = [res.get(SPECIALIST_RESOURCE, 0) for res, *_ in nodes.values()]
        assert offered and all(o >= ask for o in offered), (kind, offered)


def test_worker_nodes_scale_alike_in_cluster_yaml_and_k8s():
    nodes = worker_node_types()
    scaling = {kind: sorted((lo, hi) for name, (_, lo, hi) in found.items() if name != "head")
               for kind, found in nodes.items()}
    assert scaling["cluster.yaml"] == scaling["k8s"], scaling


@pytest.mark.parametrize("name", ["production", "k8s"])
def test_production_points_at_a_redis_cluster(name, monkeypatch):
    """Every replica's settings say Redis Cluster (REDIS_URL comes from the nodes)."""
    env = serve_configs()[name]["applications"][0]["runtime_env"]["env_vars"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().redis.cluster is True
