"""DVC stage `masks@<set>`: class-agnostic region masks for one set's configured splits."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.entry import run_main
from licbench.masks.stage import run_masks_stage
from licbench.params import load_params


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="output folder: masks.parquet, images.parquet, overlays/")
    parser.add_argument("--summary", required=True, help="output statistics (JSON, DVC metrics)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    run_masks_stage(load_params(args.params), args.dataset, args.out, args.summary, args.data_root)


if __name__ == "__main__":
    run_main(main)
