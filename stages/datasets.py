"""DVC stage `datasets@<set>`: fetch one dataset, verify it, write its manifest."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.config import load_params
from licbench.data.datasets import run_datasets_stage
from licbench.data.sources import SOURCES
from licbench.entry import run_main


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="dataset name, e.g. kodak or bsds500")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    params = load_params(args.params, sources=SOURCES)
    run_datasets_stage(params.datasets, args.dataset, args.data_root)


if __name__ == "__main__":
    run_main(main)
