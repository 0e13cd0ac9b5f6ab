"""The stage boundary (licbench.entry.run_main): a failure of the file system
ends in one line, `<path>: <reason>`, and leaves nothing partial."""

import errno
import os
import resource
import subprocess
import sys

import pytest

from licbench.config import load_section
from licbench.entry import run_main
from licbench.data.datasets import run_datasets_stage

from conftest import REPO


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_full_disk_is_one_line_naming_the_file(mirror, tmp_path, monkeypatch, capsys):
    """The disk fills up while a dataset file is written: a full disk shows at
    fsync (delayed allocation) as often as at write()."""
    monkeypatch.setenv("LICBENCH_MIRROR", str(mirror))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    cfg = load_section(REPO / "params.yaml", "datasets", {"sets": ["kodak"], "mirror": None})
    with pytest.raises(SystemExit) as caught:
        run_main(lambda: run_datasets_stage(cfg, "kodak", tmp_path / "data"))
    assert caught.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'data' / 'kodak' / 'kodim01.png'}: the disk is full "
                   "(no space left on device)"]
    assert files_under(tmp_path / "data") == []


def test_a_file_size_limit_stops_the_real_stage_command_in_one_line(mirror, tmp_path):
    """The datasets stage as DVC runs it, under a 100 kB file-size limit (a
    real write failing, EFBIG): exit 1, one line with the file, no partial file."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    env = dict(os.environ, LICBENCH_MIRROR=str(mirror))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "datasets.py"), "kodak",
                           "--params", str(REPO / "params.yaml")],
                          cwd=tmp_path, env=env, preexec_fn=limit, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("INFO ")]
    assert errors == ["error: data/kodak/kodim01.png: File too large"], proc.stderr
    assert files_under(tmp_path / "data") == []


def test_a_full_disk_while_saving_a_training_state_names_the_file(tmp_path, monkeypatch, capsys):
    """torch.save wraps a failed write in a RuntimeError naming neither file nor
    cause; the state is written through fileio.save_tensors, which raises the OSError."""
    import builtins

    import torch

    from licbench.fileio import save_tensors

    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def opener(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode and str(file).endswith(".tmp") else f

    monkeypatch.setattr(builtins, "open", opener)
    state = tmp_path / "models" / "state.pt"
    with pytest.raises(SystemExit):
        run_main(lambda: save_tensors(state, {"model": torch.zeros(1000)}))
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {state}: the disk is full (no space left on device)"]
    assert files_under(tmp_path) == []


def test_the_licbench_command_names_an_output_it_cannot_write(tmp_path, capsys):
    from PIL import Image

    from licbench.cli import EXIT_INPUT, main
    from test_cli import make_checkpoint

    Image.new("RGB", (64, 64)).save(tmp_path / "img.png")
    ckpt = make_checkpoint(tmp_path / "m.pt")
    assert main(["compress", str(tmp_path / "img.png"), str(tmp_path / "x.lic"), "-m", str(ckpt)]) == 0
    capsys.readouterr()
    # The output's folder would have to be where a file is.
    assert main(["decompress", str(tmp_path / "x.lic"), str(tmp_path / "img.png" / "out.png"),
                 "-m", str(ckpt)]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"licbench: error: {tmp_path / 'img.png'}: File exists"]


def test_importing_the_models_prints_no_deprecation_of_torch_jit(tmp_path):
    """torch 2.14 deprecates torch.jit.script, which CompressAI's imports call:
    every stage and command would print that FutureWarning first."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    probe = ("import warnings; warnings.simplefilter('default'); import licbench; "
             "import licbench.models, licbench.coding.codec, licbench.evaluate")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch.jit.script" not in done.stderr, done.stderr[-2000:]
