"""DVC stage `evaluate@<arch>-<lambda>-<set>`: code a set to bitstream files, decode, measure."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.config import load_params
from licbench.data.sources import SOURCES
from licbench.entry import run_main
from licbench.tracking import target
from licbench.evaluate import run_evaluate_stage
from licbench.metrics import METRICS


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="output folder: bitstreams/ and per_image.parquet")
    parser.add_argument("--summary", required=True, help="output summary metrics (JSON)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    params = load_params(args.params, sources=SOURCES, metrics=METRICS)
    run_evaluate_stage(params.evaluate, args.checkpoint, args.dataset, args.out, args.summary,
                       args.data_root, mlflow_to=target(params),
                       metric_weights=params.metric_weights)


if __name__ == "__main__":
    run_main(main)
