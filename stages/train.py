"""DVC stage `train@<arch>-<lambda>`: train one model, write its checkpoint."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.config import load_params
from licbench.data.sources import SOURCES
from licbench.entry import run_main
from licbench.tracking import target
from licbench.models import ARCHITECTURES
from licbench.train import run_train_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--lmbda", type=float, required=True, help="rate-distortion trade-off")
    parser.add_argument("--checkpoint", required=True, help="output checkpoint path")
    parser.add_argument("--summary", required=True, help="output training summary (JSON)")
    parser.add_argument("--state", help="resumable training state: written every "
                        "train.checkpoint_every steps, resumed from when present")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    params = load_params(args.params, sources=SOURCES, architectures=ARCHITECTURES)
    run_train_stage(params.train, args.arch, params.architecture(args.arch, args.lmbda), args.lmbda,
                    args.checkpoint, args.summary, args.data_root, args.state,
                    mlflow_to=target(params))


if __name__ == "__main__":
    run_main(main)
