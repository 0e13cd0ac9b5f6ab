"""Fuzz the bitstream decoder with mutated .lic files.

    python bench/fuzz_bitstreams.py --cases 10000            # the full run
    python bench/fuzz_bitstreams.py --cases 300 --seed 1     # a short run

Valid files are made from small images with a small model (random weights,
seeded; or --model CKPT), then mutated: bit flips, truncation, trailing bytes,
random header fields, streams replaced by random bytes, emptied, swapped,
resized. Half of the mutations recompute the CRCs so that the damage reaches
the model and the rANS decoder rather than stopping at the checksum.

Each case is decoded in a worker process with an address-space limit; the parent
watches it with a time-out. A case ends in one of: decoded (an image out: the
mutation left a valid file, say a smaller height in the same padded size),
format_errors (our own refusal: FormatError, or ModelMismatchError when the
damage hits the model id; ``format_error_kinds`` counts apart the streams the
rANS decoder took to their end and refused there), other_exceptions (any other exception:
a bug), hangs (no answer within --timeout), crashes (the worker died: a
segmentation fault, say), memory_errors (MemoryError under the limit).
The last line printed is a JSON object with these counts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


# --- valid seeds -------------------------------------------------------------

def make_seeds(model_path: str | None, seed: int) -> tuple[list[bytes], dict]:
    import numpy as np
    import torch

    from licbench.coding.codec import compress_image
    from licbench.coding.container import encode_container
    from licbench.models import build_model, load_checkpoint, save_checkpoint

    if model_path is None:
        torch.manual_seed(seed)
        model = build_model("mbt2018-mean", {"N": 16, "M": 24}).eval()
        model.update(force=True)
        model_path = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-model-{os.getpid()}.pt")
        save_checkpoint(model_path, model, "mbt2018-mean", {"N": 16, "M": 24}, 0.01)
    ckpt = load_checkpoint(model_path)
    rng = np.random.default_rng(seed)
    images = [
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (40, 1, 3)),
        np.full((1, 1, 3), 128, dtype=np.uint8),
        rng.integers(0, 256, (130, 70, 3), dtype=np.uint8),
    ]
    seeds = [encode_container(compress_image(ckpt, im)) for im in images]
    return seeds, {"model": model_path}


# --- mutations ---------------------------------------------------------------

def rebuild(header: bytes, streams: list[bytes], count_at: int) -> bytes:
    """A file with this header prefix (up to the stream count) and valid CRCs,
    as coding/container.py seals one."""
    from licbench.coding.container import seal_header, stream_table

    return seal_header(header[:count_at] + stream_table(streams)) + b"".join(streams)


def mutate(data: bytes, rnd: random.Random) -> tuple[str, bytes]:
    from licbench.coding.container import layout

    lay = layout(data)
    streams, pos = [], lay.payload_at
    for n in lay.lengths:
        streams.append(data[pos:pos + n])
        pos += n
    kind = rnd.choice(["bitflip", "truncate", "append", "random_bytes", "splice",
                       "header_field", "stream_random", "stream_empty", "stream_swap",
                       "stream_resize", "stream_bitflip", "absurd_size"])
    if kind == "bitflip":
        b = bytearray(data)
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        return kind, bytes(b)
    if kind == "truncate":
        return kind, data[:rnd.randrange(len(data))]
    if kind == "append":
        return kind, data + rnd.randbytes(rnd.randint(1, 64))
    if kind == "random_bytes":
        return kind, rnd.randbytes(rnd.randint(0, 256))
    if kind == "splice":
        i = rnd.randrange(len(data))
        return kind, data[:i] + rnd.randbytes(rnd.randint(0, 16)) + data[i + rnd.randint(0, 16):]
    # The rest keep the CRCs valid, so decoding goes past the checksums.
    header = bytearray(data[:lay.count_at])
    if kind == "header_field":
        i = rnd.randrange(4, lay.count_at)
        header[i] = rnd.randrange(256)
    elif kind == "absurd_size":
        at = lay.size_at + rnd.choice([0, 4])
        header[at:at + 4] = struct.pack(">I", rnd.choice([0, 1, 65535, 65536, 2**31, 2**32 - 1]))
    elif kind == "stream_random":
        i = rnd.randrange(len(streams))
        streams[i] = rnd.randbytes(rnd.choice([len(streams[i]), rnd.randint(0, 4096)]))
    elif kind == "stream_empty":
        streams[rnd.randrange(len(streams))] = b""
    elif kind == "stream_swap":
        streams.reverse()
    elif kind == "stream_resize":
        i = rnd.randrange(len(streams))
        cut = rnd.randint(0, len(streams[i]))
        streams[i] = streams[i][:cut] if rnd.random() < 0.5 else streams[i] + rnd.randbytes(cut)
    elif kind == "stream_bitflip":
        i = rnd.randrange(len(streams))
        if streams[i]:
            s = bytearray(streams[i])
            for _ in range(rnd.randint(1, 4)):
                j = rnd.randrange(len(s))
                s[j] ^= 1 << rnd.randrange(8)
            streams[i] = bytes(s)
    return kind, rebuild(bytes(header), streams, lay.count_at)


# --- the worker --------------------------------------------------------------

def worker(conn, model_path: str, mem_limit_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (mem_limit_mb << 20, mem_limit_mb << 20))
    import torch

    torch.set_num_threads(1)
    from licbench.coding.codec import decompress_image
    from licbench.coding.container import decode_container
    from licbench.errors import LicbenchError
    from licbench.models import load_checkpoint

    ckpt = load_checkpoint(model_path)
    conn.send("ready")
    while True:
        data = conn.recv()
        if data is None:
            return
        try:
            decompress_image(ckpt, decode_container(data, "fuzz.lic"), "fuzz.lic")
            conn.send(("decoded", ""))
        except LicbenchError as exc:  # FormatError, or ModelMismatchError from a damaged model id
            kind = type(exc).__name__
            if "does not end where its symbols do" in str(exc):
                kind += " (stream end)"  # the rANS decoder was reached, and caught it
            conn.send(("format_error", kind))
        except MemoryError:
            conn.send(("memory_errors", ""))
        except Exception as exc:  # noqa: BLE001 - counting them is the point
            conn.send(("other_exceptions", "".join(traceback.format_exception_only(exc)).strip()))


class Decoder:
    def __init__(self, model_path: str, mem_limit_mb: int):
        self.args = (model_path, mem_limit_mb)
        self.start()

    def start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def restart(self):
        self.proc.kill()
        self.proc.join()
        self.start()

    def run(self, data: bytes, timeout: float) -> tuple[str, str]:
        try:
            self.conn.send(data)
            if not self.conn.poll(timeout):
                self.restart()
                return "hangs", ""
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self.proc.exitcode
            self.restart()
            return "crashes", f"worker exit code {code}"

    def close(self):
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def fuzz(cases: int, seed: int, timeout: float, mem_limit_mb: int, model: str | None) -> dict:
    seeds, info = make_seeds(model, seed)
    rnd = random.Random(seed)
    counts = {k: 0 for k in ("decoded", "format_errors", "other_exceptions", "hangs",
                             "crashes", "memory_errors")}
    examples: dict[str, list] = {"other_exceptions": [], "hangs": [], "crashes": [], "memory_errors": []}
    kinds: dict[str, int] = {}
    error_kinds: dict[str, int] = {}
    decoder = Decoder(info["model"], mem_limit_mb)
    start = time.perf_counter()
    try:
        for i in range(cases):
            kind, data = mutate(rnd.choice(seeds), rnd)
            kinds[kind] = kinds.get(kind, 0) + 1
            outcome, detail = decoder.run(data, timeout)
            key = "format_errors" if outcome == "format_error" else outcome
            counts[key] += 1
            if key == "format_errors":
                error_kinds[detail] = error_kinds.get(detail, 0) + 1
            if key in examples and len(examples[key]) < 5:
                examples[key].append({"case": i, "mutation": kind, "detail": detail[:300]})
    finally:
        decoder.close()
        if model is None:
            Path(info["model"]).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return {"cases": cases, **counts, "seconds": round(seconds, 2),
            "cases_per_second": round(cases / seconds, 1), "seed": seed,
            "timeout_s": timeout, "mem_limit_mb": mem_limit_mb, "mutations": kinds,
            "format_error_kinds": error_kinds,
            "examples": {k: v for k, v in examples.items() if v}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case before a hang")
    parser.add_argument("--mem-limit-mb", type=int, default=4096, help="worker address-space limit")
    parser.add_argument("--model", help="checkpoint to decode with (default: a small random model)")
    args = parser.parse_args()
    result = fuzz(args.cases, args.seed, args.timeout, args.mem_limit_mb, args.model)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
