"""ChARM and WACNN: forward, the three verbs, the coder's round trip through the
container, device independence, parameter counts, and a short training
through the train and evaluate stages whose files' rate matches the estimate."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO
from licbench.tracking import Target
from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor, to_uint8
from licbench.coding.container import decode_container, encode_container, read_bitstream
from licbench.data.images import load_rgb8
from licbench.errors import ConfigError
from licbench.evaluate import run_evaluate_stage
from licbench.models import ARCHITECTURES, Checkpoint, build_model, load_checkpoint, weights_digest
from licbench.models.wacnn import WindowAttentionLayer, window_partition, window_reverse
from licbench.config import load_params
from licbench.train import run_train_stage

ARCHS = ["charm", "wacnn"]
TINY = {"N": 16, "M": 40}  # 10 slices of 4 channels; 8 attention heads of 2 and 5 channels
PARAMS = load_params(REPO / "params.yaml", {
    "datasets": {"sets": ["kodak"]},
    "archs": ARCHS,
    "architectures": {arch: TINY for arch in ARCHS},
    "train": {"datasets": ["kodak"], "split": "test", "steps": 10, "batch_size": 2, "crop": 64,
              "lr": 1e-3, "seed": 0, "device": "cpu", "log_every": 10, "lr_schedule": "none",
              "val_split": None},
    "evaluate": {"datasets": ["kodak"], "device": "cpu", "max_images": 1},
    "masks": {"sets": {"kodak": ["test"]}},
    "mlflow": {"experiment": "test"},
})


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """arch -> (checkpoint path, MLflow store, evaluation folder, evaluation summary):
    10 steps of the train stage, then the evaluate stage on kodim01."""
    out = {}
    for arch in ARCHS:
        root = tmp_path_factory.mktemp(arch)
        store = f"sqlite:///{root / 'mlruns.db'}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", store)
            ckpt = root / "models" / "checkpoint.pt"
            run_train_stage(PARAMS.train, arch, PARAMS.architecture(arch, 0.01), 0.01, ckpt,
                            root / "models" / "train.json", data_root, mlflow_to=Target("test", "tests"))
            summary = run_evaluate_stage(PARAMS.evaluate, ckpt, "kodak", root / "eval", root / "metrics.json",
                                         data_root, mlflow_to=Target("test", "tests"))
        out[arch] = (ckpt, store, root / "eval", summary)
    return out


@pytest.fixture(scope="module")
def crop(mirror):
    return load_rgb8(mirror / "kodak" / "kodim23.png").array[100:170, 300:350]  # 70 x 50


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_and_likelihoods(arch):
    torch.manual_seed(0)
    model = build_model(arch, TINY)
    x = torch.rand(2, 3, 70, 50)  # not a multiple of 64: forward takes any size
    out = model(x)
    assert out["x_hat"].shape == (2, 3, 80, 64)  # four stride-2 layers up and down
    assert out["likelihoods"]["y"].shape == (2, 40, 5, 4)
    assert out["likelihoods"]["z"].shape == (2, 16, 2, 1)
    for v in out["likelihoods"].values():
        assert ((v > 0) & (v <= 1)).all()
    loss = out["x_hat"].square().mean() + sum(-v.log2().sum() for v in out["likelihoods"].values())
    loss.backward()
    # Every slice transform is on the gradient path (the last one too, through g_s).
    cc = model.channel_conditional
    for transforms in (cc.cc_mean_transforms, cc.cc_scale_transforms, cc.lrp_transforms):
        assert all(t[0].weight.grad is not None and t[0].weight.grad.abs().sum() > 0 for t in transforms)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_codec_rebuilds_the_forward_pass(arch):
    """The pipeline's encode/decode (entropy parameters in float64 on the CPU)
    rebuild what the model's eval-mode forward pass synthesizes."""
    torch.manual_seed(1)
    model = build_model(arch, TINY).eval()
    with torch.no_grad():
        model.g_a[-1 if arch == "charm" else -2].weight.mul_(20)  # latents over many symbols
    model.update(force=True)
    ckpt = Checkpoint(arch, dict(TINY), 0.01, model, weights_digest(model.state_dict()), {})
    image = (np.random.default_rng(1).random((128, 64, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        expected = to_uint8(model(to_tensor(image))["x_hat"])
    bs, _ = encode(ckpt, image)
    decoded, _ = decode(ckpt, decode_container(encode_container(bs)))
    assert len(bs.streams) == 2 and len(bs.streams[0]) > 100  # y was really coded
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1


def test_slice_support_follows_the_paper():
    cc = build_model("charm", {"N": 192, "M": 320}).channel_conditional
    # 320 hyper-synthesis channels plus 32 per supporting slice, at most 5 (ms2020).
    assert [t[0].in_channels for t in cc.cc_mean_transforms] == [320 + 32 * min(i, 5) for i in range(10)]
    assert [t[0].in_channels for t in cc.lrp_transforms] == [320 + 32 * min(i + 1, 6) for i in range(10)]
    assert {t[-1].out_channels for t in cc.cc_scale_transforms} == {32}


@pytest.mark.parametrize("arch, expected", [("charm", 113_988_035), ("wacnn", 75_235_779)])
def test_parameter_count_at_paper_size(arch, expected):
    model = build_model(arch, {"N": 192, "M": 320})
    assert sum(p.numel() for p in model.parameters()) == expected


def test_sizes_that_do_not_fit_are_named():
    with pytest.raises(ConfigError, match="M = 48 latent channels do not split into 10 equal slices"):
        build_model("charm", {"N": 16, "M": 48})
    with pytest.raises(ConfigError, match="20 channels do not split into 8 attention heads"):
        build_model("wacnn", {"N": 20, "M": 40})


def reference_window_attention(layer: WindowAttentionLayer, x: torch.Tensor) -> torch.Tensor:
    """The reference's computation, written out: explicit softmax, Swin's
    mask by region labels, on an input that is a multiple of the window."""
    B, C, H, W = x.shape
    ws, shift, attn = layer.window, layer.shift, layer.attn
    t = torch.roll(x.permute(0, 2, 3, 1), (-shift, -shift), (1, 2))
    windows = window_partition(t, ws)
    qkv = attn.qkv(windows).reshape(len(windows), ws * ws, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (C // attn.num_heads) ** -0.5, qkv[1], qkv[2]
    logits = q @ k.transpose(-2, -1)
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    logits = logits + bias.view(ws * ws, ws * ws, -1).permute(2, 0, 1)
    label = torch.zeros(1, H, W, 1)
    for n, (hs, wsl) in enumerate((a, b) for a in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
                                  for b in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
        label[:, hs, wsl] = n
    lw = window_partition(label, ws).squeeze(-1)
    mask = (lw[:, None, :] != lw[:, :, None]).float() * -100.0
    logits = (logits.view(B, -1, attn.num_heads, ws * ws, ws * ws) + mask[None, :, None]).flatten(0, 1)
    out = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(len(windows), ws * ws, C))
    out = torch.roll(window_reverse(out, ws, B, H, W), (shift, shift), (1, 2))
    return x + out.permute(0, 3, 1, 2)


def test_window_attention_matches_the_reference_and_takes_any_size():
    torch.manual_seed(0)
    layer = WindowAttentionLayer(dim=16, num_heads=8, window=4, shift=2)
    torch.nn.init.normal_(layer.attn.relative_position_bias_table)
    x = torch.randn(2, 16, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference_window_attention(layer, x))
        # Other sizes are padded inside: without a shift, the windows clear of
        # the padding see exactly what they saw unpadded.
        layer.shift = 0
        odd = torch.randn(1, 16, 11, 13)
        torch.testing.assert_close(layer(odd)[..., :8, :12], layer(odd[..., :8, :12]))


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_through_the_container(arch, trained, crop):
    ckpt = load_checkpoint(trained[arch][0])
    bs, enc_latent = encode(ckpt, crop)  # 70 x 50: padded to 128 x 64
    assert len(bs.streams) == ARCHITECTURES[arch].n_streams == 2 and bs.shape == (2, 1)
    captured = {}

    def capture(module, inputs, output):
        captured.setdefault("y_hat", inputs[0])

    hook = ckpt.model.g_s.register_forward_hook(capture)
    decoded, dec_latent = decode(ckpt, decode_container(encode_container(bs)))
    hook.remove()
    assert decoded.shape == crop.shape and decoded.dtype == np.uint8
    # Entropy coding is lossless: g_s sees exactly the latent the encoder coded.
    assert torch.equal(captured["y_hat"], enc_latent) and torch.equal(dec_latent, enc_latent)
    # That latent is the quantized y plus LRP, near y (the trained model's
    # eval-mode forward computes it in float32).
    x = pad_to_multiple(to_tensor(crop), 64)
    with torch.no_grad():
        y = ckpt.model.g_a(x)
    assert (enc_latent - y).abs().max() <= 1.0 + 1e-4  # rounding (0.5) plus LRP (< 0.5)
    assert encode(ckpt, crop)[0] == bs  # encoding is deterministic


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_does_not_depend_on_threads(arch, trained, crop):
    ckpt = load_checkpoint(trained[arch][0])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bs, enc_latent = encode(ckpt, crop)
        torch.set_num_threads(max(2, threads))
        fresh = load_checkpoint(trained[arch][0])  # its own float64 copy, made under other threads
        decoded, dec_latent = decode(fresh, bs)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(dec_latent, enc_latent)
    np.testing.assert_array_equal(decoded, decode(ckpt, bs)[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_train_and_evaluate_stages(arch, trained, data_root):
    import mlflow

    ckpt_path, store, out, summary = trained[arch]
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.arch == arch and ckpt.config == TINY
    train = json.loads((ckpt_path.parent / "train.json").read_text())
    assert train["steps"] == 10 and math.isfinite(train["final"]["loss"])
    [row] = pq.read_table(out / "per_image.parquet").to_pylist()
    assert row["image"] == "kodak/kodim01.png" and summary["images"] == 1
    assert row["bytes"] == (out / row["bitstream"]).stat().st_size
    assert read_bitstream(out / row["bitstream"]).arch == arch
    assert math.isfinite(row["psnr"]) and 0 < row["ms_ssim"] <= 1
    # The rate of the file (header included) against the entropy model's
    # estimate. After 10 steps they differ by 8-15% (the estimate counts
    # latents far in the tails at up to 30 bits, the likelihood bound, which
    # the coder's escape codes code for less); bench/rate_check.py trains long
    # enough to measure the gap of a trained model.
    assert row["bpp"] == pytest.approx(row["bpp_estimated"], rel=0.25)
    assert row["bpp"] > 0.05  # a real rate, not empty streams
    mlflow.set_tracking_uri(store)
    [run] = mlflow.search_runs(experiment_names=["test"], output_format="list",
                               filter_string="tags.`licbench.stage` = 'evaluate'")
    assert run.data.params["arch"] == arch and run.data.metrics["bpp"] == pytest.approx(summary["bpp"])


def test_params_and_paper_configs():
    params = load_params(REPO / "params.yaml")
    for arch in ARCHS:
        build_model(arch, params.architecture(arch, params.lambdas[0]))  # the quick default builds
        paper = load_params(REPO / "configs" / f"paper-{arch}.yaml")
        assert paper.archs == [arch]
        assert {paper.architecture(arch, l)["N"] for l in paper.lambdas} == {192}
        assert {paper.architecture(arch, l)["M"] for l in paper.lambdas} == {320}
        assert paper.train.crop % ARCHITECTURES[arch].pad_multiple == 0
