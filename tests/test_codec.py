import numpy as np
import pytest
import torch

from licbench.coding import autoregressive, channelwise, prototypes, scctx
from licbench.coding.codec import (
    compress_image, decode, decompress_image, encode, entropy_parameters, pad_to_multiple, to_tensor,
)
from licbench.coding.container import decode_container, encode_container
from licbench.coding.latent import Exact, checkerboard, groups
from licbench.data.images import load_rgb8
from licbench.errors import FormatError, ModelMismatchError
from licbench.models import ARCHITECTURES, Checkpoint, build_model, load_checkpoint, save_checkpoint




def tiny_checkpoint(arch, tmp_path, seed=0) -> Checkpoint:
    torch.manual_seed(seed)
    config = ARCHITECTURES[arch].tiny
    model = build_model(arch, config).eval()
    model.update(force=True)
    path = tmp_path / f"{arch}.pt"
    save_checkpoint(path, model, arch, config, 0.01)
    return load_checkpoint(path)


def encoder_side_latent(ckpt, x):
    """The quantized latent the encoder codes, for the non-autoregressive models,
    as the decoder should rebuild it (float32, means from the float64 h_s)."""
    m = ckpt.model
    y = m.g_a(x)
    if ckpt.arch == "bmshj2018-factorized":
        return m.entropy_bottleneck.quantize(y, "dequantize", m.entropy_bottleneck._get_medians())
    z = m.h_a(torch.abs(y) if ckpt.arch == "bmshj2018-hyperprior" else y)
    z_hat = m.entropy_bottleneck.decompress(m.entropy_bottleneck.compress(z), z.shape[-2:])
    _, means = entropy_parameters(ckpt, z_hat)
    y64 = y.double()
    if means is None:
        return torch.round(y64).float()
    return (torch.round(y64 - means) + means).float()


@pytest.fixture(scope="module")
def crop(mirror):
    return load_rgb8(mirror / "kodak" / "kodim23.png").array[100:170, 300:350]  # 70 x 50


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_round_trip_through_the_container(arch, crop, tmp_path):
    ckpt = tiny_checkpoint(arch, tmp_path)
    bs = compress_image(ckpt, crop)
    assert (bs.height, bs.width) == crop.shape[:2]
    data = encode_container(bs)
    captured = {}

    def capture(module, inputs, output):
        captured.setdefault("y_hat", inputs[0])

    synthesis = ckpt.model.g_s0 if arch == "segpic" else ckpt.model.g_s  # SegPIC: g_s0, RAT, g_s1
    hook = synthesis.register_forward_hook(capture)
    decoded = decompress_image(ckpt, decode_container(data))
    hook.remove()
    assert decoded.shape == crop.shape and decoded.dtype == np.uint8
    x = pad_to_multiple(to_tensor(crop), bs.pad_multiple)
    with torch.no_grad():
        if ARCHITECTURES[arch].coder == "wavefront":
            expected = autoregressive.compress(ckpt, x)["y_hat"]
        elif arch == "segpic":
            expected = prototypes.compress(ckpt, x)["y_hat"]
        elif ARCHITECTURES[arch].coder == "channelwise":
            expected = channelwise.compress(ckpt, x)["y_hat"]
        elif ARCHITECTURES[arch].coder == "scctx":
            expected = scctx.compress(ckpt, x)["y_hat"]
        else:
            expected = encoder_side_latent(ckpt, x)
    # Entropy coding is lossless: the decoder sees exactly the encoder's latent.
    assert torch.equal(captured["y_hat"], expected)
    # The coder's own account of the latent agrees on both sides.
    bs2, enc_latent = encode(ckpt, crop)
    assert bs2 == bs
    decoded2, dec_latent = decode(ckpt, decode_container(data))
    assert torch.equal(enc_latent, expected) and torch.equal(dec_latent, expected)
    # Decoding is deterministic.
    np.testing.assert_array_equal(decoded, decoded2)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_streams_that_do_not_end_with_their_symbols_are_refused(arch, crop, tmp_path):
    """Junk appended inside a valid container (CRCs recomputed), a stream cut
    short or one whose words are swapped: every stream of every coder checks
    that the decoder ended exactly on its last word, in the encoder's first state."""
    from dataclasses import replace

    ckpt = tiny_checkpoint(arch, tmp_path)
    bs = compress_image(ckpt, crop)
    rng = np.random.default_rng(0)
    for i, stream in enumerate(bs.streams):
        damaged = {
            "appended": stream + rng.integers(0, 256, 8, dtype=np.uint8).tobytes(),
            "appended zeros": stream + bytes(4),
            "cut": stream[:-4] if len(stream) > 8 else stream + stream,
        }
        for kind, s in damaged.items():
            streams = bs.streams[:i] + (s,) + bs.streams[i + 1:]
            data = encode_container(replace(bs, streams=streams))
            with pytest.raises(FormatError) as err:
                decompress_image(ckpt, decode_container(data, "x.lic"), "x.lic")
            message = str(err.value)
            assert "\n" not in message and message.startswith("x.lic: stream "), (kind, message)
            if kind != "cut":  # a cut can also derail a later stream's decoding first
                assert message == (f"x.lic: stream {i} does not end where its symbols do "
                                   "(bytes left over or missing); the file is damaged"), (kind, message)


def test_wrong_model_is_refused(crop, tmp_path):
    a = tiny_checkpoint("mbt2018-mean", tmp_path / "a", seed=0)
    b = tiny_checkpoint("mbt2018-mean", tmp_path / "b", seed=1)
    bs = compress_image(a, crop)
    with pytest.raises(ModelMismatchError, match="made by mbt2018-mean weights"):
        decompress_image(b, bs, "x.lic")


def test_latent_shape_inconsistent_with_size_is_refused(crop, tmp_path):
    from dataclasses import replace

    ckpt = tiny_checkpoint("mbt2018-mean", tmp_path)
    bs = compress_image(ckpt, crop)
    with pytest.raises(FormatError, match="do not match"):
        decompress_image(ckpt, replace(bs, shape=(4000, 4000)), "x.lic")
    with pytest.raises(FormatError, match="1 streams"):
        decompress_image(ckpt, replace(bs, streams=bs.streams[:1]), "x.lic")


def test_checkpoint_refuses_pickled_objects(tmp_path):
    import collections

    from licbench.errors import CheckpointError

    torch.save({"format": "licbench-checkpoint", "evil": collections.OrderedDict(a=print)},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: this checkpoint holds pickled code, not tensors \(it would run builtins.print\)"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def scctx_parameters_in_a_batch(codec, hyper, y_hat, positions):
    """ELIC's CDF indexes and means of the first image of a batch, group by
    group and pass by pass (the anchors, then the rest, at ``positions``: rows
    and columns), from the float64 channel contexts, checkerboard context
    models and entropy parameters run on the whole batch as whole-map
    convolutions, as CompressAI runs them (latent/checkerboard.py computes
    them at the pass's positions only, one image at a time)."""
    out, decoded = [], []
    for k, y_k in enumerate(torch.split(y_hat, codec.groups, dim=1)):
        side = hyper if k == 0 else torch.cat((codec.channel_context[f"y{k}"](torch.cat(decoded, dim=1)), hyper), dim=1)
        cb = codec.latent_codec[f"y{k}"]
        known = torch.zeros_like(y_k)
        for first, (rows, cols) in zip((True, False), positions[2 * k: 2 * k + 2]):
            ctx = cb.context_prediction(known)
            if first:
                ctx = torch.zeros_like(ctx)
            scales, means = cb.latent_codec["y"]._chunk(cb.entropy_parameters(torch.cat((ctx, side), dim=1)))
            out.append((cb.latent_codec["y"].gaussian_conditional.build_indexes(scales[0][:, rows, cols]),
                        means[0][:, rows, cols]))
            known[:, :, rows, cols] = y_k[:, :, rows, cols]
        decoded.append(y_k)
    return out


@pytest.mark.parametrize("arch", ["mbt2018-mean", "bmshj2018-hyperprior", "mbt2018", "cheng2020-anchor",
                                  "cheng2020-attn", "elic"])
def test_decoding_does_not_depend_on_threads_or_batch_layout(arch, crop, tmp_path):
    ckpt = tiny_checkpoint(arch, tmp_path)
    coder = ARCHITECTURES[arch].coder
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bs = compress_image(ckpt, crop)
        x = pad_to_multiple(to_tensor(crop), bs.pad_multiple)
        with torch.no_grad():
            expected = (autoregressive.compress(ckpt, x)["y_hat"] if coder == "wavefront"
                        else scctx.compress(ckpt, x)["y_hat"] if coder == "scctx"
                        else encoder_side_latent(ckpt, x))
        torch.set_num_threads(2)
        captured = []

        def capture(module, inputs, output):
            captured.append(inputs[0])

        hook = ckpt.model.g_s.register_forward_hook(capture)
        decompress_image(ckpt, bs)
        hook.remove()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(captured[0], expected)
    if coder == "wavefront":
        return  # its coder's batch layout is fixed by the wavefront: tests/test_wavefront.py
    if coder == "scctx":
        # The coder's own passes on the image alone (the y_hat it codes) and the
        # same float64 calls with the image inside a batch of two.
        with torch.no_grad():
            exact = Exact(ckpt)
            codec = exact.module("latent_codec.y")
            z_hat = ckpt.model.latent_codec["hyper"].entropy_bottleneck.decompress(
                [bs.streams[1]], torch.Size(bs.shape))
            hyper = exact.stack("latent_codec.hyper.h_s", z_hat)
            _, y_hat = groups.compress(codec, exact(ckpt.model.g_a(x)), hyper)
            assert torch.equal(y_hat.float(), expected)
            alone, decoded = [], []
            for k, y_k in enumerate(torch.split(y_hat, codec.groups, dim=1)):
                p = checkerboard.Pass(codec.latent_codec[f"y{k}"], groups.side_parameters(codec, k, hyper, decoded))
                for first in (True, False):
                    indexes, means, rows, cols = p.parameters(first)
                    alone.append((indexes, means, (rows, cols)))
                    p.put(rows, cols, y_k[0][:, rows, cols])
                decoded.append(y_k)
            other_hyper = exact.stack("latent_codec.hyper.h_s", torch.round(4 * torch.randn_like(z_hat)))
            batch = scctx_parameters_in_a_batch(codec, torch.cat([hyper, other_hyper]),
                                                torch.cat([y_hat, torch.round(4 * torch.randn_like(y_hat))]),
                                                [positions for _, _, positions in alone])
        assert len(alone) == len(batch) == 2 * len(codec.groups)
        for (indexes_a, means_a, _), (indexes_b, means_b) in zip(alone, batch):
            assert torch.equal(indexes_a, indexes_b)
            torch.testing.assert_close(means_a, means_b, rtol=0, atol=1e-12)
        return
    # The same z_hat inside a batch of two gives the same scales and means.
    with torch.no_grad():
        m = ckpt.model
        z_hat = m.entropy_bottleneck.decompress([bs.streams[1]], torch.Size(bs.shape))
        alone = entropy_parameters(ckpt, z_hat)
        batch = entropy_parameters(ckpt, torch.cat([z_hat, torch.randn_like(z_hat)]))
    (scales_a, means_a), (scales_b, means_b) = alone, batch
    gc = ckpt.model.gaussian_conditional
    assert torch.equal(gc.build_indexes(scales_a), gc.build_indexes(scales_b[:1]))
    if means_a is not None:
        torch.testing.assert_close(means_a, means_b[:1], rtol=0, atol=1e-12)
