"""Prefect flow: the whole DVC pipeline, or some stages and what they need.

    python pipelines/dag.py                          # like `dvc repro`
    python pipelines/dag.py train@mbt2018-mean-0.0018 report

One task per stage item (`dvc repro --single-item`), independent items at the
same time; see licbench.flows for how DVC's records stay true.
"""

import argparse
from pathlib import Path

from licbench.flows import dag

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages or stage items (`dvc stage list`); default: all")
    parser.add_argument("--repo", default=str(REPO))
    args = parser.parse_args()
    dag(args.targets or None, repo=args.repo)
