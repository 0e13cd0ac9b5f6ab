"""Weights saved from CompressAI's own classes, imported into licbench
checkpoints, code through licbench's codec as CompressAI's model does."""

import numpy as np
import pytest
import torch
from compressai.models import (
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)

from licbench.cli import main as cli
from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor, to_uint8
from licbench.data.images import load_rgb8
from licbench.errors import CheckpointError
from licbench.metrics import psnr
from licbench.models import get_architecture, import_compressai, load_checkpoint

COMPRESSAI = {
    "bmshj2018-factorized": FactorizedPrior,
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "mbt2018": JointAutoregressiveHierarchicalPriors,
}


def compressai_model(arch, seed=0):
    """CompressAI's class at N=16, M=24, its latent scaled to be non-trivial."""
    torch.manual_seed(seed)
    model = COMPRESSAI[arch](N=16, M=24).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(30.0)
        model.g_a[-1].bias.mul_(30.0)
    return model


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
    assert ckpt.config == {"N": 16, "M": 24} and ckpt.meta["source"] == "compressai"
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
