"""ray_cluster.yaml is checked with what `ray up` itself uses, so the two cannot drift apart.

1. The JSON schema that the installed Ray ships (ray/autoscaler/ray-schema.json), with jsonschema.
2. Ray's own config pipeline: prepare_config (defaults, merged setup commands, docker checks,
   per-type worker limits) then validate_config (the schema again plus Ray's cross-field rules).
   Only the AWS-specific bootstrap (it calls EC2 and IAM) is left out.
3. What matters to us: GPU worker types, the image built by infra/Dockerfile, token auth on,
   the dashboard where `radimagenet submit` expects it, and no secret in the file.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG_PATH = REPO / "ray_cluster.yaml"
RAY_SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


EXPECTED_IMAGE = f"ghcr.io/radimagenet/radimagenet:{_project_version()}"


@pytest.fixture(scope="module")
def raw() -> str:
    return CONFIG_PATH.read_text()


@pytest.fixture(scope="module")
def config(raw) -> dict:
    cfg = yaml.safe_load(raw)
    assert isinstance(cfg, dict)
    return cfg


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    return json.loads(RAY_SCHEMA_PATH.read_text())


def _schema_errors(schema: dict, cfg: dict) -> list[str]:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(cfg)
    ]


def _ray_validate(cfg: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


# --------------------------------------------------------------------------- schema and Ray's checks


def test_matches_the_schema_ray_ships(config, ray_schema):
    assert _schema_errors(ray_schema, config) == []


def test_passes_rays_own_prepare_and_validate(config):
    prepared = _ray_validate(config)
    # prepare_config filled Ray's defaults and kept our node types intact.
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == set(config["available_node_types"])
    assert "cluster_synced_files" in prepared


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda c: c.__setitem__("head_start_ray_command", ["ray start --head"]), id="typo-top-level"
        ),
        pytest.param(
            lambda c: c["available_node_types"]["gpu-h100x8"]["resources"].__setitem__("GPU", 7.5),
            id="fractional-gpu",
        ),
        pytest.param(lambda c: c["docker"].__setitem__("run_option", []), id="typo-docker"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu-h100x8"].__setitem__("min_worker", 1),
            id="typo-node-type",
        ),
        pytest.param(lambda c: c.__setitem__("head_node_type", "nope"), id="unknown-head-type"),
        pytest.param(
            lambda c: (
                c.__setitem__("max_workers", 0)
                or c["available_node_types"]["gpu-h100x8"].__setitem__("min_workers", 1)
            ),
            id="min-over-global-max",
        ),
    ],
)
def test_the_checks_have_teeth(config, ray_schema, mutate):
    broken = copy.deepcopy(config)
    mutate(broken)
    schema_rejects = bool(_schema_errors(ray_schema, broken))
    try:
        _ray_validate(broken)
        ray_rejects = False
    except (jsonschema.ValidationError, ValueError, AssertionError, RuntimeError, KeyError):
        ray_rejects = True
    assert schema_rejects or ray_rejects


# --------------------------------------------------------------------------- what matters to us


def test_provider_is_aws_us_east_1_with_zone_list(config):
    provider = config["provider"]
    assert provider["type"] == "aws"
    assert provider["region"] == "us-east-1"
    zones = provider["availability_zone"].split(",")
    assert len(zones) >= 2
    assert all(re.fullmatch(r"us-east-1[a-f]", z.strip()) for z in zones), zones


def test_head_is_cpu_only_and_schedules_nothing(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))


@pytest.mark.parametrize(
    "instance_type,accelerator",
    [("p5.48xlarge", "H100"), ("p4d.24xlarge", "A100")],
)
def test_gpu_worker_types(config, instance_type, accelerator):
    types = {
        name: t
        for name, t in config["available_node_types"].items()
        if t["node_config"]["InstanceType"] == instance_type
    }
    assert len(types) == 1, f"exactly one node type on {instance_type}"
    ((name, node_type),) = types.items()
    assert name != config["head_node_type"]
    assert node_type["resources"]["GPU"] == 8
    assert node_type["resources"].get(f"accelerator_type:{accelerator}") == 1
    assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
    assert node_type["max_workers"] >= 1
    assert "--gpus all" in node_type["docker"]["worker_run_options"]


def test_global_max_covers_min_workers(config):
    types = config["available_node_types"].values()
    assert sum(t.get("min_workers", 0) for t in types) <= config["max_workers"]
    assert max(t.get("max_workers", 0) for t in types) <= config["max_workers"]


def test_image_is_the_one_infra_dockerfile_builds(config):
    assert config["docker"]["image"] == EXPECTED_IMAGE
    for t in config["available_node_types"].values():
        assert t.get("docker", {}).get("worker_image", EXPECTED_IMAGE) == EXPECTED_IMAGE
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert f'org.opencontainers.image.version="{_project_version()}"' in dockerfile
    assert f"-t {EXPECTED_IMAGE}" in dockerfile


def test_cluster_runs_the_ray_version_of_the_launcher(config):
    # The launcher and the container must run the same Ray; the setup command asserts it on every
    # node, and it must name the Ray this repository is tested with.
    assert any(f"ray.__version__ == '{ray.__version__}'" in cmd for cmd in config["setup_commands"])


def test_token_auth_is_on_everywhere(config, raw):
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert any(o.startswith("-e RAY_AUTH_TOKEN_PATH=/") for o in config["docker"]["run_options"])
    starts = [
        c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in starts)
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*disabled", raw)


def test_dashboard_listens_on_all_interfaces_port_8265(config):
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--head" in head_start
    assert "--dashboard-host=0.0.0.0" in head_start
    assert "--dashboard-port=8265" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start


def test_token_and_env_come_from_outside_the_repository(config):
    token_path = next(
        o.split("=", 1)[1] for o in config["docker"]["run_options"] if o.startswith("-e RAY_AUTH_TOKEN_PATH=")
    )
    mounts = config["file_mounts"]
    assert any(token_path.startswith(remote.rstrip("/") + "/") for remote in mounts), (
        "token path is not mounted"
    )
    for local in mounts.values():
        assert local.startswith("~/"), f"{local}: keep credentials out of the repository"
        assert not Path(os.path.expanduser(local)).resolve().is_relative_to(REPO)


def test_jobs_get_bucket_and_mlflow_from_the_environment(config):
    text = "\n".join(config["setup_commands"] + config["head_setup_commands"])
    assert "cluster.env" in text
    assert "RADIMAGENET_BUCKET" in text
    assert "MLFLOW_TRACKING_URI" in text


def test_nodes_use_instance_profiles_for_aws_credentials(config):
    for name, t in config["available_node_types"].items():
        profile = t["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), name
        assert t["node_config"].get("MetadataOptions", {}).get("HttpTokens") == "required", name


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"ASIA[0-9A-Z]{16}",  # AWS temporary key id
    r"(?i)aws_secret_access_key\s*[:=]\s*\S+",
    r"(?i)aws_access_key_id\s*[:=]\s*\S+",
    r"(?i)(password|passwd|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{12,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)ssh_private_key\s*:",
    r"RAY_AUTH_TOKEN\s*=",
    r"://[^/\s:@]+:[^/\s@]+@",  # credentials inside a URL
]


@pytest.mark.parametrize("pattern", SECRET_PATTERNS)
def test_no_secrets_in_the_file(raw, pattern):
    code = "\n".join(line for line in raw.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(pattern, code), f"looks like a secret: {pattern}"
