"""Training that survives and scales: exact resume after kill -9, schedules,
validation, early stopping, NaN stop, MLflow resume, DDP on 2 CPU processes."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.distributed as dist
from compressai.losses import RateDistortionLoss

import licbench.train.distributed as distributed
import licbench.train.loop as loop
from licbench.data.crops import RandomCrops, center_crops
from licbench.config import TrainConfig, train_config, with_overrides
from licbench.errors import ParamsError, TrainingError
from licbench.models import build_model, load_checkpoint
from licbench.train import train_model

from conftest import REPO
from train_worker import stage, tiny_images

WORKER = Path(__file__).with_name("train_worker.py")
ARCH, ARCH_CONFIG, LMBDA = "mbt2018-mean", {"N": 16, "M": 24}, 0.01
# 8 steps, a state every 3, validation every 3 on 2 fixed crops.
SETTINGS = dict(steps=8, batch_size=2, crop=64, lr=1e-3, seed=3, device="cpu", log_every=2,
                checkpoint_every=3, val_split="val", val_images=2, val_crop=64, val_every=3,
                lr_schedule="plateau", lr_patience=0)


def config(**settings) -> TrainConfig:
    return train_config(REPO / "params.yaml", **settings)


def worker_env(settings: dict) -> dict:
    # The worker computes part of a run that tests compare bit for bit with
    # one computed here: same thread count (float sums depend on it).
    env = dict(os.environ, TRAIN_WORKER=json.dumps(settings), OMP_NUM_THREADS=str(torch.get_num_threads()))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


def run(tmp: Path, cfg: TrainConfig, state: bool = True, **kwargs) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return train_model(ARCH, ARCH_CONFIG, LMBDA, cfg, tiny_images(3), tmp / "checkpoint.pt",
                       val_images=tiny_images(2, seed=1) if cfg.val_split else None,
                       state_path=tmp / "state.pt" if state else None, **kwargs)


def assert_same_tensors(a, b, where=""):
    """Every tensor equal (torch.equal), through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where


def assert_same_run(dir_a: Path, dir_b: Path):
    sa = torch.load(dir_a / "state.pt", weights_only=True)
    sb = torch.load(dir_b / "state.pt", weights_only=True)
    assert sa["step"] == sb["step"] and sa["finished"] and sb["finished"]
    for key in ("model", "optimizer", "aux_optimizer", "scheduler", "best_model", "data_rng", "rng"):
        assert_same_tensors(sa[key], sb[key], key)
    assert load_checkpoint(dir_a / "checkpoint.pt").weights_sha256 == \
        load_checkpoint(dir_b / "checkpoint.pt").weights_sha256


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    summary = run(out, config(**SETTINGS))
    return out, summary


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    # The worker stops in the middle of step 5, after the state of step 3.
    proc = subprocess.Popen([sys.executable, str(WORKER), "hang", str(out)],
                            env=worker_env(dict(SETTINGS, hang_at=5)))
    try:
        deadline = time.monotonic() + 60
        while not (out / "hanging").exists():
            assert proc.poll() is None, "the worker ended before it was killed"
            assert time.monotonic() < deadline, "the worker did not reach step 5"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(out / "state.pt", weights_only=True)
    assert (state["step"], state["finished"]) == (3, False)
    assert not (out / "checkpoint.pt").exists()

    summary = run(out, config(**SETTINGS))
    assert summary["resumed_from"] == 3 and summary["steps"] == 8
    ref_dir, ref = uninterrupted
    assert summary["last_weights_sha256"] == ref["last_weights_sha256"]
    assert summary["val"] == ref["val"] and summary["final"] == ref["final"]
    assert_same_run(out, ref_dir)


def test_interrupted_run_with_step_decay_and_bf16_resumes_exactly(tmp_path, monkeypatch):
    settings = dict(SETTINGS, lr_schedule="step", lr_milestones=[3], lr_factor=0.5, amp="bf16", steps=6,
                    checkpoint_every=2)
    logged = []
    reference = run(tmp_path / "a", config(**settings), log_metrics=lambda m, s: logged.append((s, m)))
    lrs = {s: m["train/lr"] for s, m in logged if "train/lr" in m}
    assert lrs == {2: 1e-3, 4: 5e-4, 6: 5e-4}

    batch, calls = RandomCrops.batch, {"n": 0}

    def interrupt_at_step_5(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(RandomCrops, "batch", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", config(**settings))
    monkeypatch.setattr(RandomCrops, "batch", batch)
    summary = run(tmp_path / "b", config(**settings))
    assert summary["resumed_from"] == 4
    assert summary["last_weights_sha256"] == reference["last_weights_sha256"]
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_state_of_other_settings_or_a_finished_run_is_not_resumed(uninterrupted, tmp_path, caplog):
    ref_dir, ref = uninterrupted
    (tmp_path / "state.pt").write_bytes((ref_dir / "state.pt").read_bytes())
    with caplog.at_level(logging.INFO, logger="licbench.train"):
        summary = run(tmp_path, config(**SETTINGS))
    assert "a finished run (step 8); training from the start" in caplog.text
    assert summary["resumed_from"] is None
    assert summary["last_weights_sha256"] == ref["last_weights_sha256"]

    state = torch.load(ref_dir / "state.pt", weights_only=True)
    state["finished"] = False
    torch.save(state, tmp_path / "state.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="licbench.train"):
        summary = run(tmp_path, config(**dict(SETTINGS, lr=2e-3, steps=4)))
    assert "saved under other settings or data (step 8); ignoring it" in caplog.text
    assert summary["resumed_from"] is None and summary["steps"] == 4


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    batch, calls = RandomCrops.batch, {"n": 0}

    def nan_at_step_6(self, *args, **kwargs):
        calls["n"] += 1
        x = batch(self, *args, **kwargs)
        return x * math.nan if calls["n"] == 6 else x

    monkeypatch.setattr(RandomCrops, "batch", nan_at_step_6)
    with pytest.raises(TrainingError, match=r"loss is nan at step 6 \(bpp .*, mse nan\); the last good state"):
        run(tmp_path, config(**SETTINGS))
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 3 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "checkpoint.pt").exists()



@pytest.mark.parametrize("bad, clip", [(math.nan, 1.0), (math.inf, 1.0), (math.inf, 0.0)])
def test_a_non_finite_gradient_stops_like_a_non_finite_loss(bad, clip, tmp_path, monkeypatch):
    """The loss stays finite; one gradient is NaN or infinite at step 6 (with
    gradient clipping and without)."""
    build, steps = loop.build_model, {"n": 0}

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)

        def hook(grad):
            steps["n"] += 1
            return grad * bad if steps["n"] == 6 else grad

        model.g_a[0].weight.register_hook(hook)
        return model

    monkeypatch.setattr(loop, "build_model", poisoned)
    with pytest.raises(TrainingError, match=rf"gradient norm is {bad} at step 6 \(loss [0-9.]+\); "
                                            r"the last good state"):
        run(tmp_path, config(**dict(SETTINGS, clip_max_norm=clip)))
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 3 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "checkpoint.pt").exists()


def test_one_line_per_validation_and_a_summary_line_at_the_end(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="licbench.train")
    summary = run(tmp_path, config(**dict(SETTINGS, steps=4, val_every=2)), state=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "licbench.train"]
    validations = [line for line in lines if ": validation at step " in line]
    assert [line.split(": ")[1] for line in validations] == [
        "validation at step 2", "validation at step 4"]
    assert all(" bpp, " in line and " dB PSNR (best: step " in line for line in validations)
    assert lines[-1].startswith(f"train mbt2018-mean-0.01: 4 steps in {summary['seconds']:.1f} s; last ")
    assert f"best at step {summary['best_step']}; {tmp_path / 'checkpoint.pt'} (weights " \
        f"{summary['weights_sha256'][:12]})" in lines[-1]

def test_plateau_decay_early_stopping_and_the_best_checkpoint(tmp_path):
    # lr 0: the validation loss never improves after the first validation.
    # params.yaml refuses it (a training that trains nothing); here it is the point.
    settings = dict(SETTINGS, steps=40, val_every=1, early_stopping=2, lr_factor=0.5)
    frozen = config(**settings).model_copy(update={"lr": 0.0, "aux_lr": 0.0})
    logged = []
    summary = run(tmp_path, frozen, log_metrics=lambda m, s: logged.append((s, m)))
    assert (summary["steps"], summary["stopped_early"], summary["best_step"]) == (3, True, 1)
    vals = [s for s, m in logged if "val/loss" in m]
    assert vals == [1, 2, 3]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["finished"] and state["step"] == 3
    # plateau, patience 0: halved at each validation without improvement
    assert state["scheduler"]["num_bad_epochs"] == 0 and state["scheduler"]["_last_lr"] == [0.0]

    # Steps of 1e-6 improve the validation loss by less than plateau's
    # threshold (1e-4 relative): it halves the rate after each later
    # validation (the log at step s shows the rate before the validation at s).
    logged.clear()
    settings = dict(SETTINGS, lr=1e-6, steps=4, val_every=1, lr_factor=0.5, log_every=1)
    summary = run(tmp_path / "b", config(**settings).model_copy(update={"aux_lr": 0.0}),
                  log_metrics=lambda m, s: logged.append((s, m)))
    lrs = [m["train/lr"] for s, m in logged if "train/lr" in m]
    assert lrs == [1e-6, 1e-6, 5e-7, 2.5e-7]
    best = torch.load(tmp_path / "b" / "state.pt", weights_only=True)["best_model"]
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert summary["best_step"] in (1, 2, 3, 4)
    # update() rewrote the quantiles and CDF tables; the network is the best one.
    assert torch.equal(ckpt.model.state_dict()["g_a.0.weight"], best["g_a.0.weight"])


def test_settings_refused_once_the_model_is_known():
    with pytest.raises(ParamsError, match="params.yaml: train.val_crop: 96 is not a multiple of 64; "
                                          "mbt2018-mean needs a multiple of 64"):
        run(Path("/nonexistent"), config(**dict(SETTINGS, val_crop=96)))
    with pytest.raises(ParamsError, match="params.yaml: train.amp: 'fp16' needs CUDA; none or bf16"):
        run(Path("/nonexistent"), config(**dict(SETTINGS, amp="fp16")))


@pytest.fixture(scope="module")
def kodak_root(mirror, tmp_path_factory):
    from licbench.data.datasets import prepare_dataset
    from licbench.data.sources import kodak

    root = tmp_path_factory.mktemp("data")
    prepare_dataset(kodak(), root, root / "manifests" / "kodak.parquet", mirror=mirror)
    return root


STAGE_PARAMS = {
    "datasets": {"sets": ["kodak"]},
    "architectures": {ARCH: ARCH_CONFIG},
    "train": {"datasets": ["kodak"], "split": "test", "steps": 4, "batch_size": 2, "crop": 64, "lr": 1e-3,
              "seed": 0, "device": "cpu", "log_every": 1, "checkpoint_every": 2, "val_split": "test",
              "val_images": 2, "val_crop": 64, "val_every": 2, "lr_schedule": "none"},
    "evaluate": {"datasets": ["kodak"]},
    "masks": {"sets": {"kodak": ["test"]}},
    "mlflow": {"experiment": "test"},
}


def test_a_resumed_stage_continues_its_mlflow_run(kodak_root, tmp_path, monkeypatch):
    batch, calls = RandomCrops.batch, {"n": 0}

    def interrupt_at_step_4(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return batch(self, *args, **kwargs)

    paths = [tmp_path / "checkpoint.pt", tmp_path / "train.json", kodak_root, tmp_path / "state.pt"]
    monkeypatch.setattr(RandomCrops, "batch", interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        stage(STAGE_PARAMS, *paths)
    monkeypatch.setattr(RandomCrops, "batch", batch)
    summary = stage(STAGE_PARAMS, *paths)
    assert summary["resumed_from"] == 2
    [run_] = mlflow.search_runs(experiment_names=["test"], output_format="list")
    assert run_.info.status == "FINISHED" and run_.data.tags["licbench.resumed_at_step"] == "2"
    client = mlflow.MlflowClient()
    # Step 3 ran twice, before the interruption and after the resume: its
    # metrics were logged twice, with the same values.
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_.info.run_id, "train/loss"))
    assert [s for s, _ in loss] == [1, 2, 3, 3, 4] and loss[2] == loss[3]
    assert [m.step for m in client.get_metric_history(run_.info.run_id, "val/psnr")] == [2, 4]
    for key in ("train/lr", "train/grad_norm", "train/images_per_second", "val/bpp", "val/loss"):
        assert client.get_metric_history(run_.info.run_id, key), key
    assert load_checkpoint(tmp_path / "checkpoint.pt").meta["mlflow_run_id"] == run_.info.run_id


def test_ddp_on_two_cpu_processes(kodak_root, tmp_path):
    params = with_overrides(STAGE_PARAMS, {"train": {"steps": 3, "batch_size": 4}})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), "ddp", str(tmp_path), str(kodak_root)]
    proc = subprocess.run(cmd, env=worker_env(params), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s0, s1 = (json.loads((tmp_path / f"summary-{r}.json").read_text()) for r in (0, 1))
    assert s0["processes"] == 2 and s0["steps"] == 3
    # Both processes end with the same weights, quantiles included.
    assert s0["last_weights_sha256"] == s1["last_weights_sha256"]
    # Only the first process writes files.
    assert load_checkpoint(tmp_path / "checkpoint.pt").weights_sha256 == s0["weights_sha256"]
    assert "weights_sha256" not in s1
    assert json.loads((tmp_path / "train.json").read_text()) == s0
    # Each step's logged losses are the mean over the processes of their own.
    r0, r1 = ([json.loads(line) for line in (tmp_path / f"reduce-{r}.jsonl").read_text().splitlines()]
              for r in (0, 1))
    assert len(r0) == len(r1) == 3
    for a, b in zip(r0, r1):
        assert a["local"] != b["local"]  # two halves of the batch
        assert a["reduced"] == b["reduced"]
        assert a["reduced"] == pytest.approx([(x + y) / 2 for x, y in zip(a["local"], b["local"])])
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])  # the store the workers used
    [run_] = mlflow.search_runs(experiment_names=["test"], output_format="list")
    history = mlflow.MlflowClient().get_metric_history(run_.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
        pytest.approx([r["reduced"][0] for r in r0])


@pytest.fixture
def group_of_one(tmp_path):
    """A real gloo process group of this process alone."""
    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_collectives_device_is_the_backends(group_of_one, monkeypatch):
    assert distributed.collective_device() == torch.device("cpu")  # gloo
    monkeypatch.setattr(dist, "get_backend", lambda group=None: dist.Backend.NCCL)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed.collective_device() == torch.device("cuda", 1)


class Reduced(Exception):
    """Raised by the fake all_reduce once it has seen its tensor."""


@pytest.mark.parametrize("where", ["validation", "step"])
def test_every_reduction_hands_the_collective_a_tensor_on_the_groups_device(where, group_of_one, tmp_path,
                                                                            monkeypatch):
    """NCCL refuses a CPU tensor, so a validation that sums on the CPU must
    move its sums to the GPU before reducing them. Here the group's device is
    the meta device, where nothing of the run is computed: a reduction that
    hands the collective the tensor where it was computed is caught on the CPU."""
    seen = []

    def all_reduce(tensor, *args, **kwargs):
        seen.append((tensor.device, tensor.dtype))
        raise Reduced  # a meta tensor holds nothing to read back

    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    with pytest.raises(Reduced):
        if where == "validation":
            loop.validate(build_model(ARCH, ARCH_CONFIG), center_crops(tiny_images(2, seed=1), 64),
                          RateDistortionLoss(lmbda=LMBDA), 2, torch.device("cpu"))
        else:
            run(tmp_path, config(**SETTINGS), state=False)
    # float64: the validation's sums over many crops
    assert seen == [(torch.device("meta"), torch.float64 if where == "validation" else torch.float32)]


def test_training_batches_are_contiguous_and_cheng2020_trains_on_them():
    """Batches in contiguous N x C x H x W (the permuted stack's channels-last
    strides crash the backward pass of Cheng2020's strided 1x1 convolution in
    torch 2.14 on the CPU); a Cheng2020 step runs forward and backward on one."""
    from licbench.data.crops import PartitionedCrops

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(2)]
    x = RandomCrops(images, 64, seed=0).batch(2)
    assert x.shape == (2, 3, 64, 64) and x.is_contiguous()
    parts = [np.zeros(im.shape[:2], dtype=np.int32) for im in images]
    assert PartitionedCrops(images, parts, 64, seed=0).batch(2)[0].is_contiguous()
    torch.manual_seed(0)
    model = build_model("cheng2020-anchor", {"N": 16}).train()
    for _ in range(3):
        out = model(x)
        (out["x_hat"].mean() - sum(torch.log2(v).mean() for v in out["likelihoods"].values())).backward()
