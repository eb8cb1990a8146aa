from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import lightning_compress as lc
from lightning_compress.cli import _prepare_wandb, instantiate_children, metric_value, train
from lightning_compress.codec import read_artifact
from tests.conftest import compose_train

CONF = Path(lc.__file__).parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_conf_and_recipes_are_reachable_from_the_repo_root() -> None:
    root = Path(__file__).parents[1]
    assert (root / "conf" / "train.yaml").is_file()
    assert (root / "recipes" / "dense_lenet300_fmnist.yaml").is_file()


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_instantiates(tmp_path: Path, data: str) -> None:
    cfg = compose_train([f"data={data}"], tmp_path)
    dm = instantiate(cfg.data)
    assert dm.batch_size == cfg.data.batch_size
    assert dm.download is False
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_instantiates(tmp_path: Path, model: str) -> None:
    cfg = compose_train([f"model={model}"], tmp_path)
    net = instantiate(cfg.model, num_classes=10, in_shape=[3, 32, 32])
    assert net.lc_spec["name"] == model
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks", "optimizer", "scheduler", "recipe", "debug"])
def test_every_group_option_composes(tmp_path: Path, group: str) -> None:
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        if group == "trainer":
            assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
        if group in ("logger", "callbacks"):
            assert all(hasattr(o, "__class__") for o in instantiate_children(cfg.get(group)))
        GlobalHydra.instance().clear()


def test_ddp_sim_is_two_cpu_processes(tmp_path: Path) -> None:
    cfg = compose_train(["trainer=ddp_sim"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == ("cpu", 2, "ddp_spawn")
    GlobalHydra.instance().clear()


def test_sweep_plugins_compose(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train(["hparams_search=fmnist_optuna", "hydra/launcher=submitit_local"], tmp_path)
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_
    assert "LocalLauncher" in cfg.hydra.launcher._target_
    GlobalHydra.instance().clear()
    cfg = compose_train(["hydra/launcher=submitit_slurm"], tmp_path)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    GlobalHydra.instance().clear()


def test_train_end_to_end_writes_artifact_and_report(train_cfg: DictConfig, tmp_path: Path) -> None:
    metrics, objects = train(train_cfg)
    path = objects["artifact_path"]
    assert path == tmp_path / "model.lcz"
    assert path.is_file()
    assert path.with_suffix(".png").stat().st_size > 10_000  # the report's picture, next to the artifact
    assert metrics["size/artifact_bytes"] == os.path.getsize(path)
    assert metrics["size/fp32_bytes"] == 4 * 266_610
    assert 0.0 <= metrics["test/acc"] <= 1.0
    # the reloaded artifact gives exactly the accuracy of the trained model
    assert metrics["test/acc_artifact"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metric_value(metrics, "val/acc") == metrics["val/acc"]
    # beside the artifact (not in it): the validation metrics and the run's names, not per-step training figures
    assert read_artifact(path).metadata == {}
    stored = json.loads(path.with_suffix(".json").read_text())
    assert lc.size_report(path).metadata == stored
    assert stored["val/acc"] == pytest.approx(metrics["val/acc"])
    assert not [k for k in stored if k.startswith("train/")]
    csv = next(tmp_path.glob("csv/version_*/metrics.csv")).read_text()
    assert "size/ratio" in csv
    assert "test/acc_artifact" in csv


def test_train_resumes_from_checkpoint(tmp_path: Path, fake_fmnist_root: Path) -> None:
    base = [
        "logger=none",
        "data.debian_dir=/nonexistent",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "artifact.verify=false",
        "test=false",
    ]
    cfg = compose_train([*base, "trainer.max_epochs=1"], tmp_path / "a", fake_fmnist_root)
    train(cfg)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    GlobalHydra.instance().clear()
    cfg = compose_train([*base, "trainer.max_epochs=2", f"ckpt_path={ckpt}"], tmp_path / "b", fake_fmnist_root)
    _, objects = train(cfg)
    assert objects["trainer"].current_epoch == 2
    assert objects["trainer"].global_step == 4
    GlobalHydra.instance().clear()


def test_optimized_metric_must_exist() -> None:
    with pytest.raises(KeyError, match="`optimized_metric` 'val/f1' was not logged"):
        metric_value({"val/acc": 0.5}, "val/f1")
    assert metric_value({}, None) is None


def test_wandb_goes_offline_without_key(
    train_cfg: DictConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = train_cfg.copy()
    with open_dict(cfg):
        cfg.logger = {"wandb": {"_target_": "x"}}
    with caplog.at_level("INFO"):
        _prepare_wandb(cfg)
    assert os.environ["WANDB_MODE"] == "offline"
    assert sum("logging offline" in r.message for r in caplog.records) == 1
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    _prepare_wandb(cfg)
    assert os.environ["WANDB_MODE"] == "disabled"


def test_wandb_logger_receives_size_report(train_cfg: DictConfig) -> None:
    """Default logger (W&B, disabled mode): the run completes and the report goes through the W&B code path."""
    with open_dict(train_cfg):
        train_cfg.logger = OmegaConf.create(
            {"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": train_cfg.paths.output_dir}}
        )
    metrics, _ = train(train_cfg)
    assert metrics["size/ratio"] > 0.99


def _run_cli(args: list[str], tmp_path: Path, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "LC_OUTPUT_DIR": str(tmp_path), "LC_DATA_DIR": str(data)}
    cmd = [sys.executable, "-m", "lightning_compress.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_real_cli_run(tmp_path: Path, fake_fmnist_root: Path) -> None:
    proc = _run_cli(["recipe=dense_lenet300_fmnist", "debug=fast", "data.debian_dir=/none"], tmp_path, fake_fmnist_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compression ratio" in proc.stdout
    artifacts = list(tmp_path.glob("dense_lenet300_fmnist/runs/*/model.lcz"))
    assert len(artifacts) == 1
    assert lc.size_report(artifacts[0]).params == 266_610


def test_report_command_reads_any_artifact(tmp_path: Path) -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight[:, :15] = 0.0  # mostly zeros: the sparse codec, chosen from the values
    path = lc.save(net, tmp_path / "net.lcz")
    proc = subprocess.run(
        [sys.executable, "-c", "from lightning_compress.cli import entry; entry()", "report", str(path), "--png"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{path.stat().st_size:,}" in proc.stdout  # the total read from the file
    assert "sparse" in proc.stdout
    assert path.with_suffix(".png").stat().st_size > 5_000
    missing = subprocess.run(
        [sys.executable, "-c", "from lightning_compress.cli import entry; entry()", "report", str(tmp_path / "no.lcz")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0
    assert "no.lcz" in missing.stderr
    assert "artifact written by lc.save" in missing.stderr


def test_multirun_smoke(tmp_path: Path, fake_fmnist_root: Path) -> None:
    proc = _run_cli(
        ["-m", "seed=1,2", "debug=fast", "data.debian_dir=/none", "artifact.verify=false"], tmp_path, fake_fmnist_root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(tmp_path.glob("train/multiruns/*/*/model.lcz"))) == 2


def test_missing_data_message_from_cli(tmp_path: Path) -> None:
    proc = _run_cli(["debug=fast", "data.debian_dir=/none"], tmp_path, tmp_path / "nodata")
    assert proc.returncode != 0
    assert "FashionMNIST: files missing in" in proc.stderr
    assert "apt-get install dataset-fashion-mnist" in proc.stderr


@pytest.mark.ddp
def test_ddp_sim_run(tmp_path: Path, fake_fmnist_root: Path) -> None:
    """2 CPU processes (gloo): fit, test, artifact written once by rank 0 and equal to the trained model."""
    proc = _run_cli(["trainer=ddp_sim", "debug=fast", "data.debian_dir=/none"], tmp_path, fake_fmnist_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifacts = list(tmp_path.glob("train/runs/*/model.lcz"))
    assert len(artifacts) == 1
    assert "reloaded from file" in proc.stderr + proc.stdout


def _recipe_params() -> list[object]:
    # SuRP on the 15M/25M-parameter models takes ~100 s on 2 CPU cores: slow (they still compose in the fast suite)
    slow = {"surp_vgg16_cifar10", "surp_resnet50_imagenet", "full_vgg16_cifar10", "full_resnet50_imagenet"}
    return [pytest.param(r, marks=pytest.mark.slow) if r in slow else r for r in options("recipe")]


@pytest.mark.parametrize("recipe", _recipe_params())
def test_every_recipe_runs_on_fake_data(tmp_path: Path, fake_fmnist_root: Path, recipe: str) -> None:
    """Each recipe, shrunk (debug=fast, CPU, small searches), runs end to end on tiny data in its real format."""
    from unittest import mock

    from tests.helpers.fake_data import write_cifar, write_image_folders

    write_cifar(fake_fmnist_root, 10)
    write_cifar(fake_fmnist_root, 100)
    write_image_folders(fake_fmnist_root / "imagenet", [f"n0{i}" for i in range(6)], per_class=3, size=36)
    overrides = [
        f"recipe={recipe}",
        "debug=fast",
        "trainer=cpu",
        "trainer.precision=32-true",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.val_fraction=0.25",
    ]
    if "fmnist" in recipe:
        overrides.append("data.debian_dir=/none")
    if "imagenet" in recipe:
        overrides.append("data.image_size=32")
    cfg = compose_train(overrides, tmp_path, fake_fmnist_root)
    shrink = {
        "weight_sharing": {"pop_size": 4, "n_gen": 2, "k_bounds": [2, 24], "progress": False},
        "successive_pruning": {"stages": [0.5, 0.8]},
        "ternarization": {"restarts": 3, "calibration_batches": 2},
        "neuron_elimination": {"rounds": 2, "min_rows_per_neuron": 1},
    }
    with open_dict(cfg):
        for name, node in (cfg.get("compress") or {}).items():
            node.update(shrink.get(name, {}))
    with mock.patch("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: Path(path).is_file()):
        metrics, objects = train(cfg)
    assert objects["artifact_path"].is_file()
    assert metrics["test/acc_artifact"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    prefixes = {
        "weight_sharing": "weight_sharing/",
        "successive_pruning": "surp/",
        "ternarization": "ternary/",
        "neuron_elimination": "neuron_elimination/",
        "rate_aware": "rate/",
    }
    for name in cfg.get("compress") or {}:
        assert any(k.startswith(prefixes[name]) for k in metrics)
    GlobalHydra.instance().clear()


def test_main_job_compares_with_the_committed_dense_reference(tmp_path: Path) -> None:
    """The full_* recipes end with the dense reference read from a benchmark's JSON (the best dense run per seed)."""
    import json

    from omegaconf import OmegaConf

    from lightning_compress.cli import _compare_with_reference

    bench = tmp_path / "composed.json"
    runs = [
        {
            "lenet300/dense@0.001": {"acc": 0.89},
            "lenet300/dense@0.003": {"acc": 0.90},
            "lenet5/dense@0.001": {"acc": 0.5},
        },
        {"lenet300/dense@0.001": {"acc": 0.88}, "lenet300/dense@0.003": {"acc": 0.86}},
    ]
    bench.write_text(json.dumps({"runs": runs}))
    metrics = {"test/acc_artifact": 0.88, "size/ratio": 150.0}
    fmnist = {"_target_": "lightning_compress.data.FashionMNISTDataModule"}
    declared = {"datamodule": "FashionMNISTDataModule", "model": "lenet_300_100"}
    cfg = {"reference": {"file": str(bench), "net": "lenet300", **declared}, "data": fmnist}
    _compare_with_reference(OmegaConf.create({**cfg, "model": {"name": "lenet_300_100"}}), metrics)
    assert metrics["reference/dense_acc"] == pytest.approx(0.89)  # mean of 0.90 and 0.88
    # a run of a seed the benchmark measured is compared with that seed's own dense run
    seeded = {"test/acc_artifact": 0.88}
    runs[1]["seed"] = 7
    bench.write_text(json.dumps({"runs": runs}))
    _compare_with_reference(OmegaConf.create({**cfg, "seed": 7, "model": {"name": "lenet_300_100"}}), seeded)
    assert seeded["reference/dense_acc"] == pytest.approx(0.88)
    # a seed the benchmark lacks, with a dense run of it in a seed file (the main job's seed 42): that run, not the mean
    seed_file = tmp_path / "dense_seed42.json"
    seed_file.write_text(json.dumps({"runs": [{"seed": 42, "acc": 0.87}, {"seed": 3, "acc": 0.5}]}))
    with_seeds = {**cfg, "reference": {**cfg["reference"], "seed_files": [str(seed_file)]}}
    own = {"test/acc_artifact": 0.86}
    _compare_with_reference(OmegaConf.create({**with_seeds, "seed": 42, "model": {"name": "lenet_300_100"}}), own)
    assert own["reference/dense_acc"] == pytest.approx(0.87)
    other = {"test/acc_artifact": 0.86}  # no run of seed 5 anywhere: the benchmark's mean over its seeds
    _compare_with_reference(OmegaConf.create({**with_seeds, "seed": 5, "model": {"name": "lenet_300_100"}}), other)
    assert other["reference/dense_acc"] == pytest.approx((0.90 + 0.88) / 2)
    missing = {"test/acc_artifact": 0.88}
    absent = {"file": str(tmp_path / "none.json"), "net": "x", **declared}
    _compare_with_reference(OmegaConf.create({**cfg, "reference": absent, "model": {"name": "lenet_300_100"}}), missing)
    assert "reference/dense_acc" not in missing


@pytest.mark.parametrize(
    ("data", "model"),
    [
        ("lightning_compress.data.MNISTDataModule", "lenet_300_100"),  # other data: no reference
        ("lightning_compress.data.FashionMNISTDataModule", "lenet5"),  # another network: no reference
    ],
)
def test_a_reference_of_other_data_or_another_network_is_not_compared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: str, model: str
) -> None:
    """`lcompress recipe=full_lenet300_fmnist data=mnist` must not print a drop against Fashion-MNIST's dense run."""
    import json
    import logging

    from lightning_compress.cli import _compare_with_reference

    bench = tmp_path / "composed.json"
    bench.write_text(json.dumps({"runs": [{"lenet300/dense@0.001": {"acc": 0.89}}]}))
    reference = {
        "file": str(bench),
        "net": "lenet300",
        "datamodule": "FashionMNISTDataModule",
        "model": "lenet_300_100",
    }
    metrics = {"test/acc_artifact": 0.97}
    cfg = OmegaConf.create({"reference": reference, "data": {"_target_": data}, "model": {"name": model}})
    with caplog.at_level(logging.INFO, logger="lightning_compress.cli"):
        _compare_with_reference(cfg, metrics)
    assert "reference/dense_acc" not in metrics
    assert "Dense reference: none for this run" in caplog.text
    assert "drop of" not in caplog.text


def _run_sweep(
    args: list[str], task: str, tmp_path: Path, data: Path
) -> tuple[subprocess.CompletedProcess[str], Path, list[dict[str, str]]]:
    """Run ``lcompress -m ARGS`` and return (process, sweep dir, rows of its sweep_summary.csv)."""
    import csv

    proc = _run_cli(["-m", *args, "debug=fast", "data.debian_dir=/none"], tmp_path, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next(tmp_path.glob(f"{task}/multiruns/*"))
    return proc, sweep, list(csv.DictReader((sweep / "sweep_summary.csv").open()))


def test_multirun_ends_with_a_sweep_summary(tmp_path: Path, fake_fmnist_root: Path) -> None:
    """Two jobs over a compression knob: the sweep dir gets the CSV (one row per job, Pareto marked) and the PNG."""
    args = ["compress=[successive_pruning]", "compress.successive_pruning.target_sparsity=0.5,0.9"]
    proc, sweep, rows = _run_sweep(args, "train", tmp_path, fake_fmnist_root)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert "compress.successive_pruning.target_sparsity=0.9" in rows[1]["overrides"]
    assert float(rows[1]["artifact_bytes"]) < float(rows[0]["artifact_bytes"])  # 90% zeros: the smaller file
    assert any(r["pareto"] == "True" for r in rows)
    assert (sweep / "sweep_summary.png").stat().st_size > 1000
    assert "Pareto-optimal" in proc.stdout


def test_a_failed_job_is_a_failed_row_not_the_end_of_the_sweep(tmp_path: Path, fake_fmnist_root: Path) -> None:
    """A real multirun whose second job gets bad input: the sweep finishes, the summary has a failed row."""
    args = ["compress=[successive_pruning]", "compress.successive_pruning.target_sparsity=0.5,1.5"]
    proc, _, rows = _run_sweep(args, "train", tmp_path, fake_fmnist_root)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[0]["pareto"] == "True"
    assert rows[1]["pareto"] == "False"
    assert "Job failed" in proc.stdout + proc.stderr
    assert "target_sparsity" in proc.stdout + proc.stderr


def test_sweep_summary_draws_the_dense_reference(tmp_path: Path) -> None:
    """The callback reads the dense reference of ``reference.{file,net}`` (as the full_* recipes set it)."""
    import json

    from lightning_compress.sweep import JOB_METRICS, SweepSummary, dense_reference

    (tmp_path / "0").mkdir()
    metrics = {"test/acc": 0.8, "test/acc_artifact": 0.8, "size/artifact_bytes": 1000.0, "size/ratio": 10.0}
    (tmp_path / "0" / JOB_METRICS).write_text(json.dumps({"status": "ok", "overrides": ["a=1"], "metrics": metrics}))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"runs": [{"mlp/dense@0.1": {"acc": 0.9}}, {"mlp/dense@0.1": {"acc": 0.8}}]}))
    assert dense_reference(bench, "mlp") == (pytest.approx(0.85), 2, False)
    assert dense_reference(bench, "cnn") is None
    assert dense_reference(tmp_path / "none.json", "mlp") is None
    config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path)}}, "task_name": "t", "reference": {"file": str(bench), "net": "mlp"}}
    )
    SweepSummary().on_multirun_end(config)
    assert (tmp_path / "sweep_summary.csv").is_file()
    assert (tmp_path / "sweep_summary.png").stat().st_size > 1000


def test_sweep_scatter_goes_to_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per sweep, one offline W&B run holds the summary table and the bytes-accuracy scatter (no network)."""
    from lightning_compress.tracking import log_sweep_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = [
        {"job": "0", "status": "ok", "artifact_bytes": 900.0, "artifact_acc": 0.8, "pareto": True},
        {"job": "1", "status": "failed", "artifact_bytes": None, "artifact_acc": None, "pareto": False},
    ]
    columns = ["job", "status", "artifact_bytes", "artifact_acc", "pareto"]
    run_dir = log_sweep_to_wandb(rows, columns, None, project="p", group="g", save_dir=tmp_path)
    assert run_dir is not None
    assert "offline-run" in run_dir.name
    tables = sorted(p.name for p in run_dir.rglob("*.table.json"))
    assert any(n.startswith("summary_") for n in tables), tables  # media/table/sweep/summary_*.table.json
    assert any("bytes_vs_acc" in n for n in tables), tables
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_sweep_to_wandb(rows, columns, None, project="p", group="g", save_dir=tmp_path) is None


@pytest.mark.parametrize(
    ("recipe", "knob"),
    [
        ("surp_lenet300_fmnist", "successive_pruning.target_sparsity"),
        ("rate_lenet300_fmnist", "rate_aware.target_bytes"),
    ],
)
def test_pareto_search_runs_two_objective_trials(
    tmp_path: Path, fake_fmnist_root: Path, recipe: str, knob: str
) -> None:
    """hparams_search=pareto_<recipe>: Optuna NSGA-II over the method's knobs, main returns (bytes, val acc)."""
    args = [f"hparams_search=pareto_{recipe}", "hydra.sweeper.n_trials=2"]
    _, sweep, rows = _run_sweep([*args, "hydra.sweeper.sampler.population_size=2"], recipe, tmp_path, fake_fmnist_root)
    assert len(rows) == 2
    assert all(f"compress.{knob}=" in r["overrides"] for r in rows)
    assert (sweep / "optimization_results.yaml").is_file()  # the sweeper's own record of the front


def test_artifact_goes_to_wandb_as_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .lcz is logged as a W&B artifact of type model with its figures (W&B disabled: calls checked, no network)."""
    import torch
    from lightning.pytorch.loggers import WandbLogger

    from lightning_compress.tracking import log_artifact_to_wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logged: list[object] = []
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    monkeypatch.setattr(
        type(logger.experiment), "log_artifact", lambda self, a, *args, **kw: logged.append(a), raising=False
    )
    path = lc.save(torch.nn.Linear(3, 2), tmp_path / "m.lcz")
    path.with_suffix(".json").write_text('{"task_name": "demo"}')
    metrics = {"size/artifact_bytes": float(path.stat().st_size), "size/ratio": 0.9, "test/acc": 0.5}
    log_artifact_to_wandb(logger, path, metrics, "demo")
    (artifact,) = logged
    assert artifact.type == "model"  # type: ignore[attr-defined]
    assert artifact.name.startswith("demo-model")  # type: ignore[attr-defined]
    assert artifact.metadata["size/artifact_bytes"] == path.stat().st_size  # type: ignore[attr-defined]
    assert "m.lcz" in artifact.manifest.entries  # type: ignore[attr-defined]
    assert "m.json" in artifact.manifest.entries  # type: ignore[attr-defined]


def test_submitit_local_sweep_runs_and_is_summarised(tmp_path: Path, fake_fmnist_root: Path) -> None:
    """Scale-out on an existing engine: hydra-submitit-launcher's local mode runs a 2-job sweep end to end."""
    args = ["hydra/launcher=submitit_local", "seed=1,2", "artifact.verify=false"]
    _, sweep, rows = _run_sweep(args, "train", tmp_path, fake_fmnist_root)
    assert len(list(sweep.glob("*/model.lcz"))) == 2
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_slurm_launcher_config_composes() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="lightning_compress.conf"):
        overrides = ["hydra/launcher=lc_slurm", "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=4"]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    # one SLURM task per GPU on as many nodes as the trainer uses: what Lightning DDP expects under SLURM
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (2, 4)
