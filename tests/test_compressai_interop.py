"""Weights saved from CompressAI's own classes, imported into licbench
checkpoints, code through licbench's codec as CompressAI's model does."""

import numpy as np
import pytest
import torch
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    Elic2022Official,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)

from licbench.cli import main as cli
from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor, to_uint8
from licbench.data.images import load_rgb8
from licbench.errors import CheckpointError, ConfigError
from licbench.metrics import psnr
from licbench.models import build_model, get_architecture, import_compressai, load_checkpoint

COMPRESSAI = {
    "bmshj2018-factorized": FactorizedPrior,
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "mbt2018": JointAutoregressiveHierarchicalPriors,
    "cheng2020-anchor": Cheng2020Anchor,
    "cheng2020-attn": Cheng2020Attention,
    "elic": Elic2022Official,
}
# Cheng2020: M = N; ELIC's channel groups take 128 channels and M - 128; the others N=16, M=24.
SIZES = {"cheng2020-anchor": {"N": 16}, "cheng2020-attn": {"N": 16}, "elic": {"N": 16, "M": 136}}


def compressai_model(arch, seed=0):
    """CompressAI's class at its SIZES, its latent scaled to be non-trivial."""
    torch.manual_seed(seed)
    model = COMPRESSAI[arch](**SIZES.get(arch, {"N": 16, "M": 24})).eval()
    last = [m for m in model.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(30.0)
        last.bias.mul_(30.0)
    return model


def test_every_compressai_architecture_is_tested():
    from licbench.models import compressai_architectures

    assert sorted(compressai_architectures()) == sorted(COMPRESSAI)


@pytest.fixture(scope="module")
def crop(mirror):
    return load_rgb8(mirror / "kodak" / "kodim15.png").array[:96, :160]


@pytest.mark.parametrize("arch", sorted(COMPRESSAI))
@pytest.mark.parametrize("saved", ["updated", "wrapped-without-tables"])
def test_imported_weights_code_as_compressai_does(arch, saved, crop, tmp_path):
    model = compressai_model(arch)
    if saved == "updated":
        model.update(force=True)
        torch.save(model.state_dict(), tmp_path / "weights.pth")
    else:  # examples/train.py's checkpoint of a DataParallel model, before update()
        state = {f"module.{k}": v for k, v in model.state_dict().items()}
        torch.save({"epoch": 3, "state_dict": state}, tmp_path / "weights.pth")
        model.update(force=True)
    import_compressai(tmp_path / "weights.pth", arch, 0.0130, tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt.config == SIZES.get(arch, {"N": 16, "M": 24}) and ckpt.meta["source"] == "compressai"
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor), name

    decoded, _ = decode(ckpt, encode(ckpt, crop)[0])
    with torch.no_grad():
        out = model.compress(pad_to_multiple(to_tensor(crop), get_architecture(arch).pad_multiple))
        theirs = to_uint8(model.decompress(out["strings"], out["shape"])["x_hat"][..., :96, :160])
    assert abs(psnr(crop, decoded) - psnr(crop, theirs)) < 0.01
    assert np.abs(decoded.astype(int) - theirs.astype(int)).max() <= 2


def test_wrong_architecture_or_size_is_refused(tmp_path):
    torch.save(compressai_model("mbt2018-mean").state_dict(), tmp_path / "mean.pth")
    with pytest.raises(CheckpointError, match=r"mean.pth: the weights do not fit mbt2018 .*\(they fit mbt2018-mean\)"):
        import_compressai(tmp_path / "mean.pth", "mbt2018", 0.01, tmp_path / "out.pt")
    with pytest.raises(CheckpointError, match="mean.pth: the weights have M=24, not 192"):
        import_compressai(tmp_path / "mean.pth", "mbt2018-mean", 0.01, tmp_path / "out.pt", {"M": 192})
    torch.save(compressai_model("cheng2020-anchor").state_dict(), tmp_path / "anchor.pth")
    with pytest.raises(CheckpointError, match=r"anchor.pth: no weights 'g_a.0.weight'; not a CompressAI mbt2018 "
                                              r"state dict \(they fit cheng2020-anchor\)"):
        import_compressai(tmp_path / "anchor.pth", "mbt2018", 0.01, tmp_path / "out.pt")
    with pytest.raises(CheckpointError, match=r"anchor.pth: the weights do not fit cheng2020-attn with N=16 "
                                              r"\(they fit cheng2020-anchor\): "):
        import_compressai(tmp_path / "anchor.pth", "cheng2020-attn", 0.01, tmp_path / "out.pt")
    with pytest.raises(ConfigError, match="'cheng2020-anchor' takes N, not M"):
        import_compressai(tmp_path / "anchor.pth", "cheng2020-anchor", 0.01, tmp_path / "out.pt", {"M": 16})
    torch.save(compressai_model("elic").state_dict(), tmp_path / "elic.pth")
    with pytest.raises(CheckpointError, match="elic.pth: the weights have M=136, not 320"):
        import_compressai(tmp_path / "elic.pth", "elic", 0.01, tmp_path / "out.pt", {"M": 320})
    with pytest.raises(ConfigError, match="elic: M=128 leaves no channel for the last group"):
        build_model("elic", {"N": 16, "M": 128})
    torch.save({"weights": [1, 2]}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="junk.pth: not a state dict"):
        import_compressai(tmp_path / "junk.pth", "mbt2018", 0.01, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_cli_import(tmp_path, capsys):
    model = compressai_model("bmshj2018-hyperprior")
    model.update(force=True)
    torch.save(model.state_dict(), tmp_path / "hyper.pth")
    assert cli(["import-compressai", str(tmp_path / "hyper.pth"), str(tmp_path / "h.pt"),
                "--arch", "bmshj2018-hyperprior", "--lmbda", "0.0067"]) == 0
    assert load_checkpoint(tmp_path / "h.pt").lmbda == 0.0067
    assert cli(["import-compressai", str(tmp_path / "hyper.pth"), str(tmp_path / "m.pt"),
                "--arch", "mbt2018", "--lmbda", "0.0067"]) == 3
    assert "hyper.pth: the weights do not fit mbt2018" in capsys.readouterr().err


def test_cli_import_cheng2020(tmp_path, capsys):
    model = compressai_model("cheng2020-attn")
    model.update(force=True)
    torch.save(model.state_dict(), tmp_path / "attn.pth")
    assert cli(["import-compressai", str(tmp_path / "attn.pth"), str(tmp_path / "a.pt"),
                "--arch", "cheng2020-attn", "--lmbda", "0.0483", "--N", "16"]) == 0
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert (ckpt.arch, ckpt.config) == ("cheng2020-attn", {"N": 16})
    assert cli(["import-compressai", str(tmp_path / "attn.pth"), str(tmp_path / "b.pt"),
                "--arch", "cheng2020-attn", "--lmbda", "0.0483", "--N", "192"]) == 3
    assert "attn.pth: the weights have N=16, not 192" in capsys.readouterr().err
