"""DVC stage `masks@<set>`: class-agnostic region masks for one set's configured splits."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.config import load_params, resolve_mirror
from licbench.data.sources import SOURCES
from licbench.entry import run_main
from licbench.tracking import target
from licbench.masks.stage import run_masks_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="output folder: masks.parquet, images.parquet, overlays/")
    parser.add_argument("--summary", required=True, help="output statistics (JSON, DVC metrics)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    params = load_params(args.params, sources=SOURCES)
    run_masks_stage(params.masks, args.dataset, args.out, args.summary, args.data_root,
                    mirror=resolve_mirror(params.datasets), mlflow_to=target(params))


if __name__ == "__main__":
    run_main(main)
