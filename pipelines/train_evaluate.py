"""Prefect flow: train and evaluate a set of lambdas, the trainings at the same time.

    python pipelines/train_evaluate.py                   # every lambda of params.yaml
    python pipelines/train_evaluate.py 0.0018 0.0035 --arch mbt2018-mean

The lambdas must be listed in params.yaml (DVC records only the items
dvc.yaml declares). One training per GPU, or `prefect.workers` on the CPU.
"""

import argparse
from pathlib import Path

from licbench.flows import train_evaluate

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lambdas", nargs="*", type=float, help="default: params.yaml lambdas")
    parser.add_argument("--arch", action="append", dest="archs", help="default: params.yaml archs")
    parser.add_argument("--repo", default=str(REPO))
    args = parser.parse_args()
    train_evaluate(args.lambdas or None, archs=args.archs, repo=args.repo)
