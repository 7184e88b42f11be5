"""``radimagenet sweep``: a grid of fine-tuning runs on Ray Tune, one MLflow run per trial under one parent.

    spec = load_sweep("pipelines/sweep-paper.yaml", ["data.manifest=s3://radimagenet/datasets/thyroid",
                                                     "sweep.name=thyroid", "grid.train.seed=0,1,2"])
    result = sweep(spec)
    print(result.markdown)

The parent run is named ``sweep.name``: running the same sweep again reuses it, skips every trial whose
run finished, and runs the others (an interrupted trial resumes from its checkpoint: its run name is
fixed by its values). Ray Tune places the trials on the cluster's free CPUs and GPUs
(``sweep.cpus_per_trial``, ``sweep.gpus_per_trial``); each trial is one fine-tuning process
(:func:`radimagenet.tasks.finetune.finetune` with ``in_process``). ``sweep.in_process`` runs them one
after another here instead. The summary (:mod:`radimagenet.tasks.sweep_report`) goes on the parent.
``radimagenet compare`` is this with a grid of inits x seeds (:mod:`radimagenet.tasks.compare`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from radimagenet.config import from_dict, to_dict
from radimagenet.errors import ConfigError
from radimagenet.io import storage, tracking
from radimagenet.tasks import sweep_report
from radimagenet.tasks.sweep_config import SweepSpec, Trial, slug
from radimagenet.train.launch import TrainingError, check_shared_storage


@dataclass
class SweepResult:
    parent_run_id: str
    name: str
    results: list[dict[str, Any]]  # one per trial (sweep_report.trial_result)
    summary: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # trials finished by an earlier run of the sweep

    @property
    def markdown(self) -> str:
        return self.summary["markdown"]


# what may change between runs of one sweep without changing a trial's result
NOT_COMPARED = ("tracking.", "checkpoint.", "scaling.", "data.num_workers", "data.shuffle_buffer")


def changed_keys(params: dict[str, str], config: Any) -> list[str]:
    """The config keys whose value differs from the run's logged params (``key: logged -> now``): a run of
    the trial under other settings. What the protocol implies (``protocol=linear``: ``train.freeze=all``)
    is applied first, as the run did; keys resolved at run time (None or empty here) and the keys of
    :data:`NOT_COMPARED` are not compared; nor are params the run did not log."""
    from radimagenet.config import flatten
    from radimagenet.dataset.format import manifest_uri
    from radimagenet.tasks.finetune_config import protocol_settings

    out = []
    for key, value in flatten(to_dict(protocol_settings(config))).items():  # as the run resolved and logged it
        if key.startswith(NOT_COMPARED) or key not in params or value is None or value in ("", [], (), {}):
            continue
        now, logged = str(value)[:6000], params[key]
        if key == "data.manifest":
            now, logged = manifest_uri(now), manifest_uri(logged)
        if now != logged:
            out.append(f"{key}: {logged[:60]} -> {now[:60]}")
    return out


def finished_run(uri: str, trial: Trial) -> str | None:
    """The id of the trial's run when it finished (a re-run skips it), else None. A finished run of the
    trial's name under other settings is a ConfigError: its results are not this trial's."""
    run_id = tracking.find_run(uri, trial.config.tracking.experiment, trial.name)
    if run_id is None:
        return None
    run = tracking.get_run(uri, run_id)
    if run.info.status != "FINISHED" or "test/auc" not in run.data.metrics:
        return None
    changed = changed_keys(run.data.params, trial.config)
    if changed:
        raise ConfigError(f"trial {trial.name} of this sweep finished before with other settings "
                          f"({'; '.join(changed[:5])}): a sweep's trials are found by name, so a changed grid "
                          "needs another sweep.name")
    return run_id


def sweep(spec: SweepSpec, *, artifact_prefix: str = "sweep", tags: dict[str, str] | None = None) -> SweepResult:
    """Run every trial of ``spec`` not finished yet under the parent run ``sweep.name``; summarise them all."""
    from radimagenet.tasks import finetune as ft

    first = spec.trials[0].config
    pinned: dict[str, str] = {}  # NAME@alias -> NAME/VERSION once: every trial (and a resume) uses one version
    for trial in _one_per_init(spec.trials):  # every init checked (backbone exists, weights) before any run
        _, _, _, tags_ = ft.preflight(trial.config)
        if trial.config.init == "backbone":
            pinned[trial.config.backbone] = tags_["radimagenet.backbone"]
    spec = dataclasses.replace(spec, trials=[
        dataclasses.replace(t, config=dataclasses.replace(t.config, backbone=pinned[t.config.backbone]))
        if t.config.init == "backbone" else t for t in spec.trials])
    uri = tracking.tracking_uri(first.tracking.uri)
    done = {t.name: run_id for t in spec.trials if (run_id := finished_run(uri, t))}  # checked before the parent
    parent, resumed = tracking.start_or_resume_run(
        uri, first.tracking.experiment, spec.sweep.name,
        tags={"radimagenet.kind": artifact_prefix, "radimagenet.task": first.task, **(tags or {})})
    try:
        tracking.log_params(uri, parent, {"sweep." + k: v for k, v in to_dict(spec.sweep).items()}
                            | {"grid." + k: str(v)[:5000] for k, v in spec.axes.items()}
                            | {"trials": len(spec.trials), "data.manifest": first.data.manifest}
                            | {f"pinned.{slug(ref)}": version for ref, version in pinned.items()})
        pending = [dataclasses.replace(t, config=_nested(t.config, parent)) for t in spec.trials if t.name not in done]
        if done:
            print(f"[radimagenet] sweep {spec.sweep.name}: {len(done)} of {len(spec.trials)} trials finished "
                  f"before, skipped", flush=True)
        failed = _run_trials(pending, spec) if pending else []
        if failed:
            raise TrainingError(f"sweep {spec.sweep.name}: {len(failed)} trial(s) failed ({'; '.join(failed)[:2000]}); "
                                "run the same sweep again to finish them (finished trials are skipped)")
        runs = {t.name: done.get(t.name) or finished_run(uri, t) for t in spec.trials}
        missing = [name for name, run_id in runs.items() if run_id is None]
        if missing:
            raise TrainingError(f"sweep {spec.sweep.name}: no finished run for {missing}")
        results = [sweep_report.trial_result(uri, t, runs[t.name]) for t in spec.trials]
        summary = sweep_report.summarise(results, spec.sweep.reference)
        sweep_report.log_summary(uri, parent, results, summary, artifact_prefix)
    except BaseException:
        tracking.end_run(uri, parent, "FAILED")
        raise
    tracking.end_run(uri, parent, "FINISHED")
    return SweepResult(parent, spec.sweep.name, results, summary, sorted(done))


def _one_per_init(trials: list[Trial]) -> list[Trial]:
    seen: dict[tuple[str, str], Trial] = {}
    for t in trials:
        seen.setdefault((t.config.init, t.config.backbone), t)
    return list(seen.values())


def _nested(cfg: Any, parent: str) -> Any:
    return dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, parent_run_id=parent))


def run_trial(config: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """One trial (a Ray Tune function trainable, or called here): fine-tune in this process. ``env``: the
    driver's settings for workers (through the object store, never into Tune's stored trial params)."""
    import torch

    from radimagenet.tasks.finetune import finetune
    from radimagenet.tasks.finetune_config import FinetuneConfig

    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    os.environ.update(env or {})
    res = finetune(from_dict(FinetuneConfig, config["finetune"]), in_process=True)
    return {"test_auc": float(res.metrics.get("test/auc", float("nan"))), "run_id": res.run_id}


def _run_trials(trials: list[Trial], spec: SweepSpec) -> list[str]:
    """Run ``trials`` (here, or as Ray Tune trials); the failures as ``name: reason`` lines."""
    s = spec.sweep
    if s.in_process:
        failed = []
        for t in trials:
            try:
                run_trial({"finetune": to_dict(t.config), "cpus": s.cpus_per_trial})
            except Exception as exc:  # noqa: BLE001 - one trial's failure is reported, the others run
                failed.append(f"{t.name}: {_last_line(exc)}")
        return failed
    from ray import tune

    from radimagenet.io.cluster import connect, worker_env

    trainable = tune.with_resources(tune.with_parameters(run_trial, env=worker_env()),
                                    {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})
    space = {"finetune": tune.grid_search([to_dict(t.config) for t in trials]), "cpus": s.cpus_per_trial}
    fs, path = storage.arrow_filesystem(trials[0].config.checkpoint.storage_path)  # Tune's state beside checkpoints
    with connect():
        check_shared_storage(trials[0].config.checkpoint.storage_path)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=s.max_concurrent or None),
            run_config=tune.RunConfig(name=f"sweep-{slug(s.name)}", storage_path=path, storage_filesystem=fs,
                                      verbose=1, failure_config=tune.FailureConfig(max_failures=0)))
        grid = tuner.fit()
        return [f"{r.config['finetune']['tracking']['run_name']}: {_last_line(r.error)}"
                for r in grid if r.error is not None]


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
