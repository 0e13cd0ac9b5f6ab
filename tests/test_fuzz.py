"""A short run of the bitstream fuzzer (bench/fuzz_bitstreams.py runs 10,000+)."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_mutated_bitstreams_only_raise_format_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fuzz_bitstreams.py"), "--cases", "400",
         "--seed", "7", "--timeout", "60"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cases"] == 400
    assert result["format_errors"] > 100
    # CRC-consistent garbage reaches the rANS decoder and is refused there.
    assert result["format_error_kinds"].get("FormatError (stream end)", 0) > 20
    failures = {k: result[k] for k in ("other_exceptions", "hangs", "crashes", "memory_errors")}
    assert failures == {k: 0 for k in failures}, result.get("examples")
