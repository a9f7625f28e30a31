"""Serve configs for the tests' own starts (``--serve-config``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from agents.settings import PROJECT_ROOT


def one_supervisor(data_dir: Path) -> Path:
    """``configs/local.yaml`` with one supervisor replica (not two): a start of its own on 2
    cores is up sooner, and a test that needs no second ingress replica loses nothing."""
    serve = yaml.safe_load((PROJECT_ROOT / "configs" / "local.yaml").read_text())
    supervisor = serve["applications"][0]["deployments"][0]
    supervisor["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    path = data_dir / "serve.yaml"
    path.write_text(yaml.safe_dump(serve))
    return path
