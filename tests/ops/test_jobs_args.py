"""Job submission without a cluster: argument splitting, names and resume keys, path rewriting,
the runtime env (no credentials unless asked), secret redaction, addresses and their errors."""

from __future__ import annotations

import json
import socket
import types
from pathlib import Path

import pytest

from radimagenet.cli import build_parser, main
from radimagenet.commands.submit import parse_command, split_args
from radimagenet.errors import ConfigError
from radimagenet.ops import jobs

REPO = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:8265"
REMOTE = "http://198.51.100.7:8265"  # TEST-NET-2: never this machine
ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_DEFAULT_REGION": "us-east-1",
       "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
       "AWS_ACCESS_KEY_ID": "RINACCESSKEY0001", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-that-must-not-leak",
       "RADIMAGENET_HOME": "/tmp/rin-home", "RAY_AUTH_TOKEN": "tok-0123456789"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(ENV) + ["RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "AWS_SESSION_TOKEN",
                            "RADIMAGENET_DEID_SECRET", "MLFLOW_TRACKING_TOKEN"]:
        monkeypatch.delenv(key, raising=False)


def submit_ns(argv):
    return split_args(build_parser("submit").parse_args(["submit", *argv]))


@pytest.mark.parametrize("argv, name, follow, rest", [
    (["ingest", "--follow", "--", "src", "--out", "s3://b/x"], None, True, ["src", "--out", "s3://b/x"]),
    (["--name", "n", "pretrain", "--", "--config", "c.yaml", "train.epochs=1"], "n", False,
     ["--config", "c.yaml", "train.epochs=1"]),
    (["pretrain", "--name=n", "--follow", "train.epochs=1"], "n", True, ["train.epochs=1"]),
    (["pretrain", "--", "--follow"], None, False, ["--follow"]),  # after `--`: the command's own
    (["pretrain", "--follow", "--", "--name", "x"], None, True, ["--name", "x"]),
])
def test_submit_options_before_the_double_dash_command_args_after(argv, name, follow, rest):
    ns = submit_ns(argv)
    assert (ns.name, ns.follow, ns.args) == (name, follow, rest)


def test_names_come_from_the_commands_resume_keys():
    out = ["src", "--out", "s3://radimagenet/datasets/demo"]
    assert jobs.job_name("ingest", out, parse=parse_command) == ("radimagenet-datasets-demo", out)
    assert jobs.job_name("pretrain", ["tracking.run_name=r1", "train.epochs=1"], parse=parse_command)[0] == "r1"
    # --name becomes the run name when there is none, so the same name resumes the same run
    name, args = jobs.job_name("pretrain", ["train.epochs=1"], name="demo", parse=parse_command)
    assert name == "demo" and args == ["train.epochs=1", "tracking.run_name=demo"]
    name, args = jobs.job_name("compare", ["--backbones", "scratch", "--data", "s3://b/d"], name="cmp",
                               parse=parse_command)
    assert args[-2:] == ["--run-name", "cmp"]
    name, args = jobs.job_name("finetune", [], now=lambda: 0, parse=parse_command)
    assert name.startswith("finetune-19") and args == [f"tracking.run_name={name}"]


def test_run_name_from_the_config_file(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("tracking:\n  run_name: from-yaml\n")
    name, args = jobs.job_name("pretrain", ["--config", str(cfg)], parse=parse_command)
    assert name == "from-yaml" and args == ["--config", str(cfg)]


def test_bad_arguments_fail_here_not_in_the_job():
    with pytest.raises(ConfigError, match="not valid for `radimagenet ingest`"):
        jobs.job_name("ingest", ["src"], parse=parse_command)  # --out missing
    with pytest.raises(ConfigError, match="cannot submit"):
        jobs.job_name("stack", [], parse=parse_command)


def test_local_paths_become_absolute_for_a_local_cluster(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "labels.csv").write_text("path,label\n")
    args, ship, warnings = jobs.rewrite_paths(
        ["corpus", "--labels=labels.csv", "--out", "s3://b/x", "data.labels=labels.csv", "missing.csv", "32"],
        local=True, cwd=str(tmp_path))
    assert args == [str(tmp_path / "corpus"), f"--labels={tmp_path / 'labels.csv'}", "--out", "s3://b/x",
                    f"data.labels={tmp_path / 'labels.csv'}", "missing.csv", "32"]
    assert ship == [] and warnings == []


def test_remote_cluster_ships_small_files_and_warns_about_folders(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.yaml").write_text("x: 1\n")
    args, ship, warnings = jobs.rewrite_paths(["corpus", "--config", "pipelines/p.yaml"], local=False,
                                              cwd=str(tmp_path))
    assert args == [str(tmp_path / "corpus"), "--config", "pipelines/p.yaml"]
    assert ship == ["pipelines/p.yaml"]
    assert len(warnings) == 1 and "every node mounts" in warnings[0] and "folder corpus" in warnings[0]


def test_runtime_env_ships_settings_not_credentials():
    env, shipped, warnings = jobs.build_env_vars(local=True, ship_credentials=False, environ=ENV)
    assert shipped == [] and warnings == []
    assert env["AWS_ENDPOINT_URL"] == ENV["AWS_ENDPOINT_URL"] and env["RADIMAGENET_HOME"] == "/tmp/rin-home"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env and "RAY_AUTH_TOKEN" not in env
    env, shipped, _ = jobs.build_env_vars(local=True, ship_credentials=True, environ=ENV)
    assert shipped == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_SECRET_ACCESS_KEY"] == ENV["AWS_SECRET_ACCESS_KEY"] and "RAY_AUTH_TOKEN" not in env


def test_remote_cluster_gets_no_loopback_endpoints_or_local_home():
    env, _, warnings = jobs.build_env_vars(local=False, ship_credentials=False,
                                           environ=ENV | {"MLFLOW_TRACKING_URI": "https://mlflow.example.org"})
    assert "AWS_ENDPOINT_URL" not in env and "RADIMAGENET_HOME" not in env
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.org" and env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert any("loopback" in w for w in warnings)


def test_plan_entrypoint_metadata_and_ids_hold_no_secrets(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    sub = jobs.plan("pretrain", ["--config", "pipelines/demo-pretrain.yaml", "train.epochs=1"], LOCAL,
                    parse=parse_command, name="demo", cwd=str(REPO))
    assert sub.submission_id == "pretrain-demo" and sub.attempt == 1
    assert sub.entrypoint.startswith("python -m radimagenet pretrain --config ")
    assert str(REPO / "pipelines" / "demo-pretrain.yaml") in sub.entrypoint
    assert sub.entrypoint.endswith("tracking.run_name=demo")
    assert sub.metadata["radimagenet.job"] == "pretrain-demo"
    (module,) = sub.runtime_env["py_modules"]
    assert (Path(module) / "__init__.py").exists() and Path(module).name == "radimagenet"
    text = json.dumps([sub.entrypoint, sub.metadata, sub.runtime_env])
    assert ENV["AWS_SECRET_ACCESS_KEY"] not in text and ENV["AWS_ACCESS_KEY_ID"] not in text
    assert ENV["RAY_AUTH_TOKEN"] not in text
    again = jobs.plan("pretrain", ["tracking.run_name=demo"], LOCAL, parse=parse_command, attempt=3)
    assert again.submission_id == "pretrain-demo-3" and again.metadata["radimagenet.attempt"] == "3"


def test_a_secret_in_the_arguments_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        jobs.plan("pretrain", ["tracking.run_name=x", f"data.note={ENV['AWS_SECRET_ACCESS_KEY']}"], LOCAL,
                  parse=parse_command)


def test_sanitise_redacts_known_values_and_secret_looking_options():
    text = f"--secret-key abc123 AWS_SECRET_ACCESS_KEY=xyz --token=t0k {ENV['AWS_ACCESS_KEY_ID']} keep=me"
    out = jobs.sanitise(text, ENV)
    assert "abc123" not in out and "xyz" not in out and "t0k" not in out
    assert ENV["AWS_ACCESS_KEY_ID"] not in out and "keep=me" in out
    log = f"token authentication is enabled; key {ENV['AWS_SECRET_ACCESS_KEY']}"
    assert jobs.sanitise(log, ENV, options=False) == "token authentication is enabled; key <redacted>"


def test_attempts_are_found_by_metadata_or_id():
    def d(sid, meta=None):
        return types.SimpleNamespace(submission_id=sid, metadata=meta or {})

    assert jobs._attempt_of(d("ingest-x"), "ingest-x") == 1
    assert jobs._attempt_of(d("ingest-x-4"), "ingest-x") == 4
    assert jobs._attempt_of(d("ingest-xy"), "ingest-x") is None
    assert jobs._attempt_of(d("other", {"radimagenet.job": "ingest-x", "radimagenet.attempt": "2"}),
                            "ingest-x") == 2


def test_addresses(monkeypatch):
    with pytest.raises(jobs.JobError, match="no Ray cluster address"):
        jobs.resolve_address()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:8265")
    assert jobs.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://h:1/")
    assert jobs.resolve_address() == "http://h:1"
    assert jobs.resolve_address("https://x:443") == "https://x:443"
    with pytest.raises(jobs.JobError, match="not a Jobs API address"):
        jobs.resolve_address("ray://h:10001")
    assert jobs.is_local_address(LOCAL) and jobs.is_local_address("http://localhost:1")
    assert not jobs.is_local_address(REMOTE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_errors_are_one_clear_line(capsys):
    assert main(["jobs", "list"]) == 2
    assert "no Ray cluster address" in capsys.readouterr().err
    assert main(["jobs", "--address", f"http://127.0.0.1:{free_port()}", "logs", "x"]) == 2
    assert "cannot reach the Ray dashboard" in capsys.readouterr().err
    assert main(["submit", "ingest", "--address", LOCAL, "--", "src"]) == 2  # --out missing
    assert "not valid for `radimagenet ingest`" in capsys.readouterr().err


def test_jobs_checks_arguments_with_the_parser_it_is_given():
    import argparse

    seen = []

    def parse(verb, args):
        seen.append((verb, args))
        return argparse.Namespace(out="s3://b/from-parser")

    assert jobs.job_name("ingest", ["anything"], parse=parse) == ("b-from-parser", ["anything"])
    assert seen == [("ingest", ["anything"])]

    def asks_for_help(verb, args):
        raise SystemExit(0)

    with pytest.raises(jobs.JobError, match="--help` is not something to submit"):
        jobs.job_name("ingest", ["--help"], parse=asks_for_help)


def test_ops_imports_neither_the_cli_nor_the_commands():
    import ast

    for path in sorted((REPO / "platform" / "radimagenet" / "ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                assert not name.startswith(("radimagenet.cli", "radimagenet.commands")), f"{path}: {name}"


def test_the_stack_mlflow_user_name_is_not_a_secret_but_its_password_is(monkeypatch):
    """The local stack's MLflow user is "radimagenet", a word in every bucket URI and in the command."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "radimagenet")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-" + "x" * 20)
    sub = jobs.plan("pretrain", ["tracking.run_name=x", "data.manifest=s3://radimagenet/datasets/d"], LOCAL,
                    parse=parse_command)
    assert "s3://radimagenet/datasets/d" in sub.entrypoint
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
        jobs.plan("pretrain", ["tracking.run_name=x", "data.note=pw-" + "x" * 20], LOCAL, parse=parse_command)


def test_an_ingest_job_keeps_its_paths_out_of_the_entrypoint(tmp_path):
    """SOURCE and --labels go into a file of the job's working_dir, read by `radimagenet ingest @FILE`."""
    source = tmp_path / "SMITH^JOHN_MRN0012345"
    source.mkdir()
    (source / "labels.csv").write_text("path,label\n")
    sub = jobs.plan("ingest", [str(source), "--labels", str(source / "labels.csv"), "--out", "s3://b/d"], LOCAL,
                    parse=parse_command, name="d")
    assert sub.entrypoint == "python -m radimagenet ingest @radimagenet-args.txt"
    assert "SMITH" not in json.dumps([sub.entrypoint, sub.metadata, sub.runtime_env])
    assert sub.args_file.splitlines() == [str(source), "--labels", str(source / "labels.csv"), "--out", "s3://b/d"]
    args_path = tmp_path / "radimagenet-args.txt"
    args_path.write_text(sub.args_file)
    ns = build_parser("ingest").parse_args(["ingest", f"@{args_path}"])
    assert ns.source == str(source) and ns.labels == str(source / "labels.csv") and ns.out == "s3://b/d"
    with pytest.raises(ConfigError, match="line break"):
        jobs.plan("ingest", ["a\nb", "--out", "s3://b/d"], LOCAL, parse=parse_command, name="d")
