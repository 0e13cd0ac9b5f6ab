"""Prefect flow: evaluate the checkpoints newer than their evaluation, then the reports.

    python pipelines/evaluate_newest.py

Trains nothing. prefect.yaml deploys it nightly (cron 0 2 * * *).
"""

import argparse
from pathlib import Path

from licbench.flows import evaluate_newest

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=str(REPO))
    evaluate_newest(repo=parser.parse_args().repo)
