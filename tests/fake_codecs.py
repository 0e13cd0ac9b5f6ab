"""Stand-ins for VTM/HM's encoder and decoder apps and for bpgenc/bpgdec.

They take the real programs' command lines and do a simple lossy job (a
uniform quantiser whose step grows with QP, deflate as the "entropy coder"),
so the anchors' wrappers can be tested end to end without the real binaries.
Each writes the command line it got to $FAKE_CODEC_LOG.
"""

import stat
import sys
from pathlib import Path

COMMON = r'''
import json, os, sys, zlib
import numpy as np

def parse(argv):
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key, _, value = a[2:].partition("=")
            opts[key] = value
            i += 1
        elif a.startswith("-") and i + 1 < len(argv):
            opts[a[1:]] = argv[i + 1]
            i += 2
        else:
            opts.setdefault("_", []).append(a)
            i += 1
    return opts

def log(argv):
    with open(os.environ["FAKE_CODEC_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")

def step(qp):
    return max(1, round(2 ** ((int(qp) - 4) / 6)))
'''

ENCODER = COMMON + r'''
argv = sys.argv[1:]
if argv == ["--help"]:
    print("VVCSoftware: FAKE Encoder Version 99.1 [test]")
    sys.exit(0)
log(argv)
o = parse(argv)
assert o["InputChromaFormat"] == "444" and o["InputBitDepth"] == "8", o
assert os.path.isfile(o["c"]), "config missing"
w, h, s = int(o["wdt"]), int(o["hgt"]), step(o["q"])
x = np.fromfile(o["i"], dtype=np.uint8)
assert x.size == 3 * w * h, (x.size, w, h)
q = np.round(x.astype(np.float64) / s).astype(np.uint8)
header = np.array([w, h, s], dtype=np.uint32).tobytes()
open(o["b"], "wb").write(header + zlib.compress(q.tobytes(), 9))
'''

DECODER = COMMON + r'''
argv = sys.argv[1:]
log(argv)
o = parse(argv)
assert o["d"] == "8", o
data = open(o["b"], "rb").read()
w, h, s = np.frombuffer(data[:12], dtype=np.uint32)
q = np.frombuffer(zlib.decompress(data[12:]), dtype=np.uint8)
np.clip(q.astype(np.int64) * int(s), 0, 255).astype(np.uint8).tofile(o["o"])
'''

BPGENC = COMMON + r'''
from PIL import Image
argv = sys.argv[1:]
if argv == ["--help"]:
    print("BPG Image Encoder version 0.9.8-fake")
    sys.exit(0)
log(argv)
o = parse(argv)
assert o["f"] == "444" and o["c"] == "ycbcr" and o["b"] == "8", o
img = Image.open(o["_"][-1]).convert("RGB")
img.save(o["o"], "JPEG", quality=max(1, 100 - 2 * int(o["q"])), subsampling=0)
'''

BPGDEC = COMMON + r'''
from PIL import Image
argv = sys.argv[1:]
log(argv)
o = parse(argv)
Image.open(o["_"][-1]).convert("RGB").save(o["o"])
'''


def install(folder: Path) -> dict:
    """Write the fake programs into ``folder``; return anchors.binaries for them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, body in [("EncoderApp", ENCODER), ("DecoderApp", DECODER),
                       ("bpgenc", BPGENC), ("bpgdec", BPGDEC)]:
        path = folder / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        paths[name] = path
    config = folder / "encoder_intra.cfg"
    config.write_text("# fake all-intra configuration\n")
    ref = {"encoder": str(paths["EncoderApp"]), "decoder": str(paths["DecoderApp"]),
           "config": str(config)}
    return {"vtm": dict(ref), "hm": dict(ref),
            "bpg": {"encoder": str(paths["bpgenc"]), "decoder": str(paths["bpgdec"])}}
