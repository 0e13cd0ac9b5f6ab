"""DVC stage `trainset`: the training set, the union of train.datasets, as data/trainset.parquet."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.config import load_params
from licbench.data.sources import SOURCES
from licbench.data.trainset import run_trainset_stage
from licbench.entry import run_main


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data", help="writes <data root>/trainset.parquet")
    args = parser.parse_args()
    params = load_params(args.params, sources=SOURCES)
    run_trainset_stage(params.train, args.data_root)


if __name__ == "__main__":
    run_main(main)
