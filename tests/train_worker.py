"""Training in a separate process, for tests/test_train.py.

    python train_worker.py hang OUT_DIR   train; at step HANG_AT write OUT_DIR/hanging and wait
    torchrun ... train_worker.py ddp OUT_DIR DATA_ROOT   run_train_stage on several processes

Settings come as JSON in the environment variable TRAIN_WORKER.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

import licbench.train as train
import licbench.train.loop as loop
from licbench.tracking import target
from licbench.config import load_params, train_config
from licbench.data.crops import RandomCrops

REPO = Path(__file__).resolve().parents[1]


def tiny_images(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    # Smooth random images: noise would make every model output alike.
    base = rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
    return [np.kron(b, np.ones((8, 8, 1), dtype=np.uint8)) for b in base]


def hang(out: Path, settings: dict) -> None:
    hang_at = settings.pop("hang_at")
    batch = RandomCrops.batch
    calls = {"n": 1}  # the step whose batch is drawn next

    def batch_then_hang(self, *args, **kwargs):
        if calls["n"] == hang_at:
            (out / "hanging").write_text("")
            time.sleep(600)
        calls["n"] += 1
        return batch(self, *args, **kwargs)

    RandomCrops.batch = batch_then_hang
    cfg = train_config(REPO / "params.yaml", **settings)
    train.train_model("mbt2018-mean", {"N": 16, "M": 24}, 0.01, cfg, tiny_images(3), out / "checkpoint.pt",
                      val_images=tiny_images(2, seed=1), state_path=out / "state.pt")


def stage(overrides: dict, checkpoint, summary, data_root, state=None) -> dict:
    """The train stage of mbt2018-mean at lambda 0.01 on params.yaml with ``overrides``."""
    params = load_params(REPO / "params.yaml", overrides)
    return train.run_train_stage(params.train, "mbt2018-mean", params.architecture("mbt2018-mean", 0.01),
                                 0.01, checkpoint, summary, data_root, state,
                                 mlflow_to=target(params))


def ddp(out: Path, data_root: str, params: dict) -> None:
    reduce = loop.all_reduce_mean  # the step's reduction, where the loop looks it up
    rank = int(os.environ["RANK"])
    record = open(out / f"reduce-{rank}.jsonl", "w")

    def recorded(values: torch.Tensor) -> torch.Tensor:
        result = reduce(values)
        record.write(json.dumps({"local": values.tolist(), "reduced": result.tolist()}) + "\n")
        return result

    loop.all_reduce_mean = recorded
    summary = stage(params, out / "checkpoint.pt", out / "train.json", data_root, out / "state.pt")
    record.close()
    (out / f"summary-{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    settings = json.loads(os.environ["TRAIN_WORKER"])
    if mode == "hang":
        hang(out, settings)
    else:
        ddp(out, sys.argv[3], settings)
