"""DVC stage `report@<set>`: RD plots, BD-rate table (Markdown, JSON) and the MLflow report run."""

import _interpreter  # noqa: F401 -- first: under the wrong python, one line, not a traceback
import argparse

from licbench.config import load_params
from licbench.entry import run_main
from licbench.tracking import target
from licbench.report import published
from licbench.report.rd import run_report_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    params = load_params(args.params, published=published.available)
    run_report_stage(params.report, args.dataset, args.out, args.data_root, archs=params.archs,
                     lambdas=params.lambdas, mlflow_to=target(params))


if __name__ == "__main__":
    run_main(main)
