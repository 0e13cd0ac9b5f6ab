"""params.yaml as one typed contract: each bad value is refused in one line that
names its key, with exit status 2, by every stage, before anything is written."""

import runpy
import sys
import typing

import pytest
import yaml

from conftest import REPO
from licbench import cli
from licbench.config import (SamConfig, TrainConfig, load_params, read_params_file, validate_params,
                             with_overrides)
from licbench.errors import ParamsError

STAGES = ("datasets", "anchors", "masks", "train", "evaluate", "report")
# The registries each stage checks names against (see its stages/<stage>.py).
KNOWS = {"datasets": {"sources"}, "anchors": {"sources", "codecs"}, "masks": {"sources"},
         "train": {"sources", "architectures"}, "evaluate": {"sources"}, "report": {"published"}}
ONLY_KODAK = {"datasets": {"sets": ["kodak"]}, "evaluate": {"datasets": ["kodak"]},
              "train": {"datasets": ["kodak"], "split": "test", "val_split": None},
              "masks": {"sets": {"kodak": ["test"]}}}

# (overrides of params.yaml, the registry that knows it is wrong or None, the line's key, the rest)
BAD = [
    ({"lambdas": [-0.01]}, None, "lambdas[0]", "-0.01 is out of range; a number > 0"),
    ({"lambdas": [0]}, None, "lambdas[0]", "0 is out of range; a number > 0"),
    ({"lambdas": [0.01, 0.01]}, None, "lambdas", "0.01 is listed twice; a non-empty list without repeats"),
    ({"train": {"steps": "4000"}}, None, "train.steps", "'4000' is a string; an integer >= 1"),
    ({"train": {"steps": 0}}, None, "train.steps", "0 is out of range; an integer >= 1"),
    ({"train": {"compile": "false"}}, None, "train.compile", "'false' is a string; true or false"),
    ({"train": {"batch_size": 16.9}}, None, "train.batch_size", "16.9 is a float; an integer >= 1"),
    ({"train": {"batch_size": 0}}, None, "train.batch_size", "0 is out of range; an integer >= 1"),
    ({"train": {"lr": True}}, None, "train.lr", "true is a boolean; a number > 0"),
    ({"train": {"lr_milestones": 3000}}, None, "train.lr_milestones",
     "3000 is an integer; a list in increasing order, each an integer >= 1"),
    ({"train": {"lr_schedule": "cosine"}}, None, "train.lr_schedule",
     "'cosine' is not allowed; one of plateau, step, none"),
    ({"train": {"lr_schedule": "plateau", "val_split": None}}, None, "train.val_split",
     "null, but lr_schedule plateau needs validations; a split of a set of train.datasets"),
    ({"train": {"device": "gpu"}}, None, "train.device", "'gpu' is not allowed; auto (CUDA when present)"),
    ({"evaluate": {"foo": 1}}, None, "evaluate.foo", "unknown key; known keys: datasets, device, max_images"),
    ({"anchors": {"foo": 1}}, None, "anchors.foo", "unknown key; known keys: codecs, binaries, workers"),
    ({"report": {"foo": 1}}, None, "report.foo", "unknown key; known keys: method, published"),
    ({"masks": {"overlay": 4}}, None, "masks.overlay", "unknown key; known keys: sets, generator, "),
    ({"masks": {"sam": {"pred_iou_thresh": 1.5}}}, None, "masks.sam.pred_iou_thresh",
     "1.5 is out of range; a number in [0, 1]"),
    ({"masks": {"sam": {"box_nms_thresh": -0.1}}}, None, "masks.sam.box_nms_thresh",
     "-0.1 is out of range; a number in [0, 1]"),
    ({"extra": 1}, None, "extra", "unknown key; known keys: datasets, archs, lambdas, "),
    ({"archs": ["mbt2018-mean", "nope"]}, None, "archs[1]", "'nope' has no entry in architectures; one of "),
    ({**ONLY_KODAK, "evaluate": {"datasets": ["bsds500"]}}, None, "evaluate.datasets[0]",
     "'bsds500' is not in datasets.sets; one of kodak"),
    ({**ONLY_KODAK, "masks": {"sets": {"kodak": ["test"], "bsds500": ["train"]}}}, None,
     "masks.sets.bsds500", "'bsds500' is not in datasets.sets; one of kodak"),
    ({**ONLY_KODAK, "train": {"datasets": ["kodak", "bsds500"]}}, None, "train.datasets[1]",
     "'bsds500' is not in datasets.sets; one of kodak"),
    ({"datasets": {"sets": ["kodak", "bsds500", "foo"]}}, "sources", "datasets.sets[2]",
     "'foo' is not a known dataset; one of bsds500, clic2020-pro-train, clic2020-pro-valid, coco2017, "
     "div2k, flickr2k, kodak, tecnick"),
    ({"train": {"split": "tset"}}, "sources", "train.split", "'tset' is not a split of bsds500; one of train, val, test"),
    ({"masks": {"sets": {"bsds500": ["train", "vla"]}}}, "sources", "masks.sets.bsds500[1]",
     "'vla' is not a split of bsds500"),
    ({"architectures": {"mbt2018-mean": {"N": 32}}}, "architectures", "architectures.mbt2018-mean.M",
     "missing; an integer >= 1"),
    ({"architectures": {"mbt2018-mean": {"N": 32, "M": 48, "K": 3}}}, "architectures",
     "architectures.mbt2018-mean.K", "unknown key; mbt2018-mean takes N, M (and by_lambda)"),
    ({"architectures": {"mbt2018-mean": {"N": 32, "M": 48}, "segpic": {"N": 32, "M": 40, "grid": 4,
                                                                        "use_mask": 2}}},
     "architectures", "architectures.segpic.use_mask", "2 is out of range; 0 or 1"),
    # A size below the architecture's declared minimum (ELIC: M - 128 channels in its last group).
    ({"architectures": {"mbt2018-mean": {"N": 32, "M": 48}, "elic": {"N": 32, "M": 100}}}, "architectures",
     "architectures.elic.M",
     "100 is out of range; an integer >= 129"),
    ({"anchors": {"codecs": {"x264": [30]}}}, "codecs", "anchors.codecs.x264", "unknown codec; one of avif, "),
    ({"report": {"published": ["vtm", "vvc-17"]}}, "published", "report.published[1]",
     "no published curve 'vvc-17' for kodak; one of "),
]


def write(tmp_path, data) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def stage_argv(stage: str, params: str, tmp_path) -> list[str]:
    out, data = tmp_path / "out", str(tmp_path / "data")
    return [f"stages/{stage}.py", *{
        "datasets": ["kodak"],
        "anchors": ["--dataset", "kodak", "--out", f"{out}/anchors"],
        "masks": ["--dataset", "bsds500", "--out", f"{out}/masks", "--summary", f"{out}/masks.json"],
        "train": ["--arch", "mbt2018-mean", "--lmbda", "0.0018", "--checkpoint", f"{out}/c.pt",
                  "--summary", f"{out}/train.json", "--state", f"{out}/state.pt"],
        "evaluate": ["--checkpoint", f"{out}/c.pt", "--dataset", "kodak", "--out", f"{out}/eval",
                     "--summary", f"{out}/eval.json"],
        "report": ["--dataset", "kodak", "--out", f"{out}/report"],
    }[stage], "--params", params, "--data-root", data]


def run_stage(stage: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run ``stages/<stage>.py`` here, as DVC would in a process of its own."""
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.syspath_prepend(str(REPO / "stages"))  # as `python stages/x.py` has it: stages/_interpreter.py
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "stages" / f"{stage}.py"), run_name="__main__")
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("overrides, registry, key, rest", BAD, ids=[b[2] for b in BAD])
def test_each_bad_value_is_refused_in_one_line_before_any_output(overrides, registry, key, rest,
                                                                   tmp_path, monkeypatch, capsys):
    params = write(tmp_path, with_overrides(read_params_file(REPO / "params.yaml"), overrides))
    refusing = [s for s in STAGES if registry is None or registry in KNOWS[s]]
    for stage in refusing:
        code, err = run_stage(stage, stage_argv(stage, params, tmp_path), monkeypatch, capsys)
        assert code == 2, (stage, err)
        assert err.splitlines()[0].startswith(f"{params}: {key}: {rest}"), (stage, err)
        assert all(line.startswith(f"{params}: ") for line in err.splitlines()), (stage, err)
    # Nothing written: no output, no data folder, no MLflow store.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    # `licbench params check` knows every registry.
    assert cli.main(["params", "check", params]) == 2
    assert f"{params}: {key}: {rest}" in capsys.readouterr().err


def test_a_missing_key_is_refused_by_name(tmp_path, monkeypatch, capsys):
    data = read_params_file(REPO / "params.yaml")
    del data["train"]["lr"]
    del data["masks"]["sam"]
    params = write(tmp_path, data)
    code, err = run_stage("train", stage_argv("train", params, tmp_path), monkeypatch, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"{params}: train.lr: missing; a number > 0",
        f"{params}: masks.sam: missing; a mapping with the keys model_type, checkpoint, sha256, "
        "points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh, box_nms_thresh, "
        "min_region_area"]
    assert not (tmp_path / "out").exists()


def test_a_mirror_that_is_no_folder_is_refused(tmp_path, monkeypatch, capsys):
    nowhere = tmp_path / "nowhere"
    params = write(tmp_path, with_overrides(read_params_file(REPO / "params.yaml"),
                                            {"datasets": {"mirror": str(nowhere)}}))
    code, err = run_stage("datasets", stage_argv("datasets", params, tmp_path), monkeypatch, capsys)
    assert code == 2
    assert err.splitlines() == [f"{params}: datasets.mirror: {str(nowhere)!r} is not a folder; "
                                "a folder laid out like <mirror>/<set>/..., or null"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_check_lists_every_problem_of_a_file_one_line_each(tmp_path, capsys):
    params = write(tmp_path, with_overrides(read_params_file(REPO / "params.yaml"), {
        "lambdas": [0], "train": {"steps": "4000", "compile": "false"}, "masks": {"overlay": 4}}))
    assert cli.main(["params", "check", params]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{params}: lambdas[0]: 0 is out of range; a number > 0",
        f"{params}: train.steps: '4000' is a string; an integer >= 1",
        f"{params}: train.compile: 'false' is a string; true or false",
        f"{params}: masks.overlay: unknown key; known keys: sets, generator, fallback_when_unavailable, "
        "device, workers, max_images, overlays, sam, fallback"]


def test_a_crop_larger_than_every_training_image_is_refused_before_training(
        data_root, tmp_path, monkeypatch, capsys):
    params = write(tmp_path, with_overrides(read_params_file(REPO / "params.yaml"),
                                            {**ONLY_KODAK, "train": {**ONLY_KODAK["train"], "crop": 1024}}))
    argv = stage_argv("train", params, tmp_path)
    argv[argv.index("--data-root") + 1] = str(data_root)
    code, err = run_stage("train", argv, monkeypatch, capsys)
    assert code == 2
    assert err.splitlines() == [f"{params}: train.crop: 1024 is larger than every image of kodak test "
                                "(the largest: kodak/kodim01.png, 768 x 512); at most 512"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_yaml_1_1_exponents_are_numbers_and_a_key_given_twice_is_refused(tmp_path):
    text = (REPO / "params.yaml").read_text()
    assert "  lr: 0.001\n" in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("  lr: 0.001\n", "  lr: 1e-4\n"))
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "1e-4"  # PyYAML: a string
    assert load_params(path).train.lr == 0.0001
    path.write_text(text.replace("  lr: 0.001\n", "  lr: 0.001\n  lr: 0.002\n"))
    with pytest.raises(ParamsError) as refused:
        load_params(path)
    line = text[: text.index("  lr: 0.001\n")].count("\n") + 2  # the second lr
    assert refused.value.lines == [f"{path}: line {line}: duplicate key 'lr'; valid YAML, each key once"]


def test_every_params_file_of_the_repository_passes_the_check(capsys):
    files = [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
    assert len(files) > 1
    for path in files:
        assert cli.main(["params", "check", str(path)]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out == f"{path}: valid\n"


def test_show_prints_the_resolved_values_which_check_again(tmp_path, capsys):
    assert cli.main(["params", "show", str(REPO / "configs" / "paper-mbt2018-mean.yaml")]) == 0
    shown = capsys.readouterr().out
    data = yaml.safe_load(shown)
    assert data["architectures"]["mbt2018-mean"]["by_lambda"][0.025] == {"N": 192, "M": 320}
    assert data["train"]["lr"] == 0.0001 and data["anchors"]["binaries"] == {}
    assert validate_params(data).model_dump() == \
        load_params(REPO / "configs" / "paper-mbt2018-mean.yaml").model_dump()


def test_the_schema_names_what_the_code_offers():
    from licbench.masks.generate import OFFICIAL_CHECKPOINTS
    from licbench.train import AMP_DTYPES

    assert set(typing.get_args(SamConfig.model_fields["model_type"].annotation)) == set(OFFICIAL_CHECKPOINTS)
    assert set(typing.get_args(TrainConfig.model_fields["amp"].annotation)) == set(AMP_DTYPES)


def test_metric_names_are_checked_against_the_registry():
    from licbench.metrics import METRICS

    with pytest.raises(ParamsError, match=r"params.yaml: evaluate.metrics\[1\]: 'ssim' is not a known metric; "
                                          r"one of psnr, ms_ssim, "):
        load_params(REPO / "params.yaml", {"evaluate": {"metrics": ["psnr", "ssim"]}}, metrics=METRICS)
    with pytest.raises(ParamsError, match=r"params.yaml: anchors.metrics: psnr is not listed; a list of metric "
                                          r"names with psnr among them"):
        load_params(REPO / "params.yaml", {"anchors": {"metrics": ["ms_ssim"]}})
    with pytest.raises(ParamsError, match=r"params.yaml: evaluate.metrics\[1\]: lpips needs network weights, "
                                          r"and metric_weights is null"):
        load_params(REPO / "params.yaml", {"evaluate": {"metrics": ["psnr", "lpips"]}}, metrics=METRICS)
    params = load_params(REPO / "params.yaml", {"evaluate": {"metrics": ["psnr", "lpips"]},
                                                "metric_weights": "/somewhere"}, metrics=METRICS)
    assert params.evaluate.metrics == ["psnr", "lpips"]
