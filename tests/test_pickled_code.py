"""A file whose pickle would run code (an object with ``__reduce__``), given to
every command that loads a checkpoint, a training state or weights: nothing in
it runs, and the refusal is ours, one line naming the file."""

import pickle
import subprocess
import sys

import pytest
import torch

from licbench.cli import EXIT_INPUT, EXIT_MODEL, main as cli
from licbench.errors import PickledCodeError
from licbench.masks.generate import load_sam
from licbench.config import train_config
from licbench.train import train_model

from conftest import REPO
from train_worker import tiny_images


class CreatesFile:
    """Unpickled, it would open (so create) ``path``: the proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(params=["torch.save", "pickle.dump"])
def hostile(request, tmp_path):
    """(file, marker): a file that would create ``marker`` when unpickled."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.pt"
    payload = {"format": "licbench-checkpoint", "state_dict": CreatesFile(marker)}
    if request.param == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=4)
    return path, marker


def assert_refused(err: str, path, marker):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"{path}: " in lines[0] and "holds pickled code, not tensors" in lines[0], err
    assert "open" in lines[0] and "weights_only" not in lines[0], err
    assert not marker.exists()


@pytest.mark.parametrize("argv", [
    ["compress", "{img}", "{tmp}/o.lic", "--model", "{evil}"],
    ["decompress", "{tmp}/x.lic", "{tmp}/o.png", "--model", "{evil}"],
    ["eval", "{img}", "--model", "{evil}", "--out", "{tmp}/eval"],
    ["import-compressai", "{evil}", "{tmp}/o.pt", "--arch", "mbt2018-mean", "--lmbda", "0.01"],
])
def test_licbench_commands_refuse_it(argv, hostile, tmp_path, capsys):
    from PIL import Image

    evil, marker = hostile
    Image.new("RGB", (64, 64)).save(tmp_path / "img.png")
    if argv[0] == "decompress":  # a real bitstream, so that the model is what is refused
        from test_cli import make_checkpoint

        assert cli(["compress", str(tmp_path / "img.png"), str(tmp_path / "x.lic"),
                    "--model", str(make_checkpoint(tmp_path / "good.pt"))]) == 0
        capsys.readouterr()
    args = [a.format(img=tmp_path / "img.png", tmp=tmp_path, evil=evil) for a in argv]
    assert cli(args) == EXIT_MODEL
    assert_refused(capsys.readouterr().err, evil, marker)


@pytest.mark.parametrize("command", ["info", "decompress"])
def test_licbench_refuses_it_as_a_bitstream(command, hostile, tmp_path, capsys):
    evil, marker = hostile
    args = [command, str(evil)] + ([str(tmp_path / "o.png")] if command == "decompress" else [])
    assert cli(args) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(evil) in err[0] and "Traceback" not in err[0]
    assert not marker.exists()


def test_the_resume_state_refuses_it(hostile, tmp_path):
    evil, marker = hostile
    cfg = train_config(REPO / "params.yaml", steps=2, batch_size=2, crop=64, device="cpu", checkpoint_every=1,
                       val_split=None, lr_schedule="none")
    with pytest.raises(PickledCodeError) as caught:
        train_model("mbt2018-mean", {"N": 16, "M": 24}, 0.01, cfg, tiny_images(2),
                    tmp_path / "checkpoint.pt", state_path=evil)
    assert_refused(str(caught.value), evil, marker)
    assert "training state" in str(caught.value)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_sam_loader_refuses_it(hostile):
    from test_masks import tiny_sam

    evil, marker = hostile
    with pytest.raises(PickledCodeError) as caught:
        load_sam("vit_b", evil, build=tiny_sam)
    assert_refused(str(caught.value), evil, marker)


def test_the_evaluate_stage_command_refuses_it(hostile, tmp_path):
    evil, marker = hostile
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "evaluate.py"), "--checkpoint", str(evil),
         "--dataset", "kodak", "--out", str(tmp_path / "out"), "--summary", str(tmp_path / "s.json"),
         "--params", str(REPO / "params.yaml"), "--data-root", str(tmp_path / "data")],
        cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert_refused(proc.stderr, evil, marker)
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.json").exists()
