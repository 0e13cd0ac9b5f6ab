"""DVC stage `anchors@<set>`: classical codecs (JPEG, WebP, JPEG 2000, AVIF, HEVC, JPEG XL) on one set."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.anchors import CODECS, run_anchors_stage
from licbench.config import load_params
from licbench.data.sources import SOURCES
from licbench.entry import run_main
from licbench.metrics import METRICS


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="output folder: per_image.parquet, curves.json")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    params = load_params(args.params, sources=SOURCES, codecs=CODECS, metrics=METRICS)
    run_anchors_stage(params.anchors, args.dataset, args.out, args.data_root, params.metric_weights)


if __name__ == "__main__":
    run_main(main)
