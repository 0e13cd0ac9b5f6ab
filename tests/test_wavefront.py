"""The mbt2018 wavefront coder (coding/latent/wavefront.py): exact round trips,
agreement with CompressAI's raster-order codec on the same weights, no
dependence on the thread count, damaged streams and masks."""

import numpy as np
import pytest
import torch

from licbench.coding import autoregressive
from licbench.coding.latent import Exact
from licbench.coding.latent.layers import scale_indexes
from licbench.coding.latent.wavefront import WavefrontContext
from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor, to_uint8
from licbench.coding.container import decode_container, encode_container
from licbench.data.images import load_rgb8
from licbench.errors import CheckpointError, FormatError
from licbench.metrics import psnr
from licbench.models import build_model, load_checkpoint, save_checkpoint


def random_checkpoint(tmp_path, seed=0, gain=30.0):
    """A tiny random mbt2018 whose latent is not all zeros: g_a's output scaled
    by ``gain``. The random entropy parameters give scales at the table's
    lower bound, so large symbols take the rANS coder's escape codes."""
    torch.manual_seed(seed)
    model = build_model("mbt2018", {"N": 16, "M": 24}).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(gain)
        model.g_a[-1].bias.mul_(gain)
    model.update(force=True)
    path = tmp_path / f"random-{seed}.pt"
    save_checkpoint(path, model, "mbt2018", {"N": 16, "M": 24}, 0.01)
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def kodak(mirror):
    return {n: load_rgb8(mirror / "kodak" / f"kodim{n:02d}.png").array for n in (4, 15, 19, 23)}


def test_wavefronts_visit_each_position_once_after_its_context(tmp_path):
    ckpt = random_checkpoint(tmp_path)
    ctx = WavefrontContext(Exact(ckpt), torch.zeros(1, 16, 3, 5, dtype=torch.float64))
    step = torch.full((12, 20), -1)
    for t, (rows, cols) in enumerate(ctx.wavefronts()):
        assert bool((step[rows, cols] == -1).all()) and bool((torch.diff(rows) > 0).all())
        step[rows, cols] = t
    assert bool((step >= 0).all()) and t + 1 == 20 + 3 * 11  # W + 3 (H - 1) steps
    for di, dj in zip(*ctx.context.offsets):  # every causal neighbour inside the latent comes earlier
        for i in range(12):
            for j in range(20):
                if 0 <= i + di < 12 and 0 <= j + dj < 20:
                    assert step[i + di, j + dj] < step[i, j]
    assert len(ctx.context.tap_rows) == 12


@pytest.mark.parametrize("size", [(1, 1), (70, 50), (64, 64), (129, 67), (17, 200)])
def test_round_trip_is_exact(size, kodak, tmp_path):
    ckpt = random_checkpoint(tmp_path)
    image = kodak[23][100:100 + size[0], 200:200 + size[1]]
    bs, enc_latent = encode(ckpt, image)
    decoded, dec_latent = decode(ckpt, decode_container(encode_container(bs)))
    assert decoded.shape == image.shape
    assert torch.equal(dec_latent, enc_latent)
    assert enc_latent.abs().max() >= 3  # a real latent, escape codes included
    # The latent g_s decodes is the encoder's quantization of y around its means.
    ckpt_y = ckpt.model.g_a(pad_to_multiple(to_tensor(image), bs.pad_multiple)).detach()
    assert float((ckpt_y - enc_latent).abs().max()) <= 0.5 + 1e-6


def test_scale_indexes_are_compressai_build_indexes(tmp_path):
    gc = random_checkpoint(tmp_path).float64_cpu().gaussian_conditional
    table = gc.scale_table
    scales = torch.cat([table, table.nextafter(table * 2), table.nextafter(table * 0), torch.rand(5000) * 300 - 20,
                        torch.tensor([0.0, -1.0, float("inf"), float("nan"), 1e-300])]).double()
    assert torch.equal(scale_indexes(gc, scales), gc.build_indexes(scales))


def compressai_codec(ckpt, image):
    """CompressAI's own float32 raster-order compress/decompress on the same
    weights: the decoded image, the latent its g_s received, its strings."""
    model = ckpt.model
    latents = []
    hook = model.g_s.register_forward_hook(lambda m, inputs, out: latents.append(inputs[0]))
    with torch.no_grad():
        x = pad_to_multiple(to_tensor(image), 64)
        out = model.compress(x)
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
    hook.remove()
    return to_uint8(x_hat[..., : image.shape[0], : image.shape[1]]), latents[0], out["strings"]


def test_same_reconstruction_as_compressai_raster_codec(briefly_trained, kodak):
    ckpt = briefly_trained("mbt2018")
    flipped = total = 0
    for image in (kodak[4][:320, :256], kodak[19][:200, :300]):
        bs, latent = encode(ckpt, image)
        decoded, _ = decode(ckpt, bs)
        theirs, their_latent, strings = compressai_codec(ckpt, image)
        assert bs.streams[1] == strings[1][0]  # the hyper-latent stream is CompressAI's
        # A symbol may round the other way where y - mean sits on a .5 boundary
        # (float32 means against float64); otherwise the latents agree to float noise.
        diff = (their_latent - latent).abs()
        flipped += int((diff > 0.5).sum())
        total += diff.numel()
        assert float(diff[diff <= 0.5].max()) < 1e-4
        assert abs(psnr(image, decoded) - psnr(image, theirs)) < 0.01
        assert np.abs(decoded.astype(int) - theirs.astype(int)).max() <= 2
    print(f"symbols quantized differently from CompressAI's codec: {flipped} of {total}")
    assert flipped <= total * 1e-4


def test_decoding_never_derails_on_many_crops(briefly_trained, mirror):
    ckpt = briefly_trained("mbt2018")
    paths = sorted((mirror / "kodak").glob("kodim*.png")) + sorted((mirror / "bsds500" / "test").glob("*.jpg"))[:8]
    rng = np.random.default_rng(7)
    nonzero = 0
    for k in range(20):
        image = load_rgb8(paths[int(rng.integers(len(paths)))]).array
        h, w = (int(v) for v in rng.integers(24, 200, size=2))
        top, left = int(rng.integers(image.shape[0] - h)), int(rng.integers(image.shape[1] - w))
        crop = image[top:top + h, left:left + w]
        bs, enc_latent = encode(ckpt, crop)
        _, dec_latent = decode(ckpt, bs)
        assert torch.equal(dec_latent, enc_latent), f"crop {k} ({h}x{w}) derailed"
        nonzero += int((enc_latent != 0).sum())
    assert nonzero > 1000


def test_streams_do_not_depend_on_thread_count(briefly_trained, kodak):
    ckpt = briefly_trained("mbt2018")
    image = kodak[15][:256, :320]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bs1, latent = encode(ckpt, image)
        torch.set_num_threads(2)
        bs2, _ = encode(ckpt, image)
        _, dec_latent = decode(ckpt, bs1)
        torch.set_num_threads(1)
        _, dec_latent1 = decode(ckpt, bs2)
    finally:
        torch.set_num_threads(threads)
    assert bs1 == bs2
    assert torch.equal(dec_latent, latent) and torch.equal(dec_latent1, latent)


def test_damaged_stream_is_decoded_to_its_end_then_refused(briefly_trained, kodak):
    """Random words in place of y: the wavefront decoder runs through them
    inside the guard (no crash), and the end check refuses the file."""
    from dataclasses import replace

    ckpt = briefly_trained("mbt2018")
    bs, _ = encode(ckpt, kodak[23][:128, :128])
    rng = np.random.default_rng(0)
    for _ in range(5):
        junk = rng.integers(0, 256, size=len(bs.streams[0]) // 4 * 4, dtype=np.uint8).tobytes()
        with pytest.raises(FormatError, match="stream 0 does not end where its symbols do"):
            decode(ckpt, replace(bs, streams=(junk, bs.streams[1])), "x.lic")


def test_non_causal_context_mask_is_refused(tmp_path):
    ckpt = random_checkpoint(tmp_path)
    ckpt.model.context_prediction.mask[:, :, 2, 2] = 1  # the current position itself
    with pytest.raises(CheckpointError, match="not the causal 5x5 mask"):
        autoregressive.compress(ckpt, torch.rand(1, 3, 64, 64))
