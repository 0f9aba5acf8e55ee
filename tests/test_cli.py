"""The `mafr` command line, driven as a user would: real files in temporary folders, a few real
subprocesses (entry point, exit codes, stderr) and the rest in-process through `mafr.cli.main`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import mafr
from mafr.cli import main
from mafr.datasets import write_dataset

from .conftest import tiny_config

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
SCRIPT = Path(sys.executable).with_name("mafr")


def run(*args, cwd=None):
    """`mafr ARGS` in a subprocess (the installed console script; `python -m mafr` without one)."""
    cmd = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "mafr"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A generated puck dataset (4 train, 2 good + 1 per defect test, 64 px), a tiny config file
    and a detector fitted on it with `mafr fit` in a subprocess."""
    tmp = tmp_path_factory.mktemp("cli")
    root = write_dataset(tmp / "data", categories=["puck"], n_train=4, n_validation=0, n_test_good=2,
                         n_test_per_defect=1, size=64)
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps(tiny_config().to_json_dict()))
    proc = run("fit", root / "puck", tmp / "det", "--config", cfg, "--quiet")
    return {"tmp": tmp, "root": root, "cfg": cfg, "det": tmp / "det", "fit": proc}


def test_fit_subprocess_saves_a_detector(ws):
    proc = ws["fit"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no progress bars, no log lines
    assert proc.stdout.startswith("fitted on 4 good parts (3 training, calibration: 1 held out)")
    det_dir = ws["det"]
    assert (det_dir / "config.json").is_file() and (det_dir / "model.safetensors").is_file()
    saved = json.loads((det_dir / "config.json").read_text())
    assert saved["grid_size"] == 8 and saved["fit"]["n_samples"] == 4 and saved["fit"]["seed"] == 0
    det = mafr.MAFRDetector.from_pretrained(det_dir)
    assert f"threshold {det.threshold_:.4f}" in proc.stdout


def test_predict_pair_subprocess_json_exit_code_and_panel(ws):
    part = ws["root"] / "puck" / "test" / "hole"
    rgb, xyz = part / "rgb" / "000.png", part / "xyz" / "000.tiff"
    panels = ws["tmp"] / "panels"
    proc = run("predict", ws["det"], rgb, xyz, "--overlay", panels)
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert set(rec) == {"name", "rgb", "xyz", "score", "threshold", "is_anomalous", "flags", "panel"}
    assert rec["name"] == "000" and rec["rgb"] == str(rgb) and rec["xyz"] == str(xyz)
    det = mafr.MAFRDetector.from_pretrained(ws["det"])
    expected = det.predict(rgb, xyz)
    assert rec["score"] == pytest.approx(expected.score, rel=1e-4)
    assert rec["threshold"] == pytest.approx(det.threshold_)
    assert rec["is_anomalous"] == (rec["score"] > rec["threshold"])
    assert proc.returncode == (1 if rec["is_anomalous"] else 0)
    panel = panels / "000_panel.png"
    assert rec["panel"] == str(panel)
    with Image.open(panel) as im:
        assert im.width > 3 * im.height and im.height >= 224  # five 224-px tiles side by side + header


def test_predict_folders_in_process(ws, tmp_path, capsys):
    test = ws["root"] / "puck" / "test"
    flat = tmp_path / "new_parts"  # NAME.png + NAME.tiff side by side
    flat.mkdir()
    for kind in ("good", "crack", "stain"):
        shutil.copy(test / kind / "rgb" / "000.png", flat / f"{kind}.png")
        shutil.copy(test / kind / "xyz" / "000.tiff", flat / f"{kind}.tiff")
    np.save(flat / "npy_part.npy", tifffile.imread(test / "bump" / "xyz" / "000.tiff"))
    shutil.copy(test / "bump" / "rgb" / "000.png", flat / "npy_part.png")

    # A flat folder, an rgb/ + xyz/ folder and a pair, in one call.
    code = main(["predict", str(ws["det"]), str(flat), str(test / "good"),
                 str(test / "dent" / "rgb" / "000.png"), str(test / "dent" / "xyz" / "000.tiff"), "--batch-size", "2"])
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in recs] == ["crack", "good", "npy_part", "stain", "000", "001", "000-2"]
    assert code == (1 if any(r["is_anomalous"] for r in recs) else 0)
    det = mafr.MAFRDetector.from_pretrained(ws["det"])
    for r in recs[:4] + recs[-1:]:
        assert r["score"] == pytest.approx(det.predict(r["rgb"], r["xyz"]).score, rel=1e-4), r["name"]


def test_info_json_and_text(ws, capsys):
    assert main(["info", str(ws["det"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    cfg = info["config"]
    assert cfg["preset"] == "paper" and cfg["grid_size"] == 8 and cfg["cbam"] == "grid" and cfg["fusion"] == "product"
    assert cfg["rgb_extractor"] == {"kind": "timm", "model_name": "vit_base_patch8_224.dino", "weights": "random", "image_size": 64}
    assert cfg["point_extractor"]["weights"] == "random" and cfg["point_extractor"]["groups"] == 32
    assert info["autoencoder"]["rgb_channels"] == 32 and info["autoencoder"]["xyz_channels"] == 144
    assert info["autoencoder"]["latent"] == 88
    det = mafr.MAFRDetector.from_pretrained(ws["det"])
    assert info["autoencoder"]["parameters"] == sum(p.numel() for p in det.autoencoder_.parameters())
    assert info["threshold"] == pytest.approx(det.threshold_)
    assert info["fit"]["n_samples"] == 4 and info["fit"]["n_calibration"] == 1
    sizes = {f["name"]: f["bytes"] for f in info["files"]}
    assert sizes == {n: (ws["det"] / n).stat().st_size for n in ("README.md", "config.json", "model.safetensors")}
    assert info["model_card"] == (ws["det"] / "README.md").read_text()

    assert main(["info", str(ws["det"])]) == 0
    text = capsys.readouterr().out
    assert f"threshold      {det.threshold_:.4f}" in text and "weights: random" in text and "model.safetensors" in text


def test_evaluate_generated_writes_tables_and_resumes(ws, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--dataset", "generated", "--root", str(ws["root"]), "--category", "puck",
            "--config", str(ws["cfg"]), "--out", str(out)]
    assert main(args + ["--quiet"]) == 0
    first = capsys.readouterr()
    assert first.err == ""
    md = (out / "results.md").read_text()
    assert md in first.out
    summary, per_type = md.split("Per defect type:")
    table = [line for line in summary.splitlines()[2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in table] == ["puck", "**mean**"]
    assert "Protocol: exact" in md
    # One line per defect type present, and the false alarms on good parts.
    kinds = [line.split("|")[2].strip() for line in per_type.splitlines()[3:] if line.startswith("|")]
    assert set(kinds) >= {"crack", "good (false alarms)"}
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["category"] for r in rows] == ["puck", "mean"] and rows[0]["n_test"] == 7
    for r in rows:
        for key in ("image_auroc", "pixel_auroc", "aupro@0.3", "aupro@0.01"):
            assert 0.0 <= r[key] <= 1.0
    row_file = out / "rows" / "puck.json"
    mtime = row_file.stat().st_mtime_ns

    assert main(args + ["--json"]) == 0
    second = capsys.readouterr()
    assert f"puck: reusing {row_file}" in second.err
    assert row_file.stat().st_mtime_ns == mtime
    report = json.loads(second.out)
    assert report["rows"][0]["image_auroc"] == rows[0]["image_auroc"] and "scores" not in report["rows"][0]


def test_evaluate_reference_protocol_says_so_and_keeps_its_own_rows(ws, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--dataset", "generated", "--root", str(ws["root"]), "--category", "puck",
            "--config", str(ws["cfg"]), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "Protocol: exact" in capsys.readouterr().out
    assert main(args + ["--protocol", "reference", "--json"]) == 0
    captured = capsys.readouterr()
    assert "reusing" not in captured.err  # an exact-protocol row is not a reference-protocol row
    report = json.loads(captured.out)
    assert report["protocol"] == "reference" and report["rows"][0]["protocol"] == "reference"
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"] == "reference"
    assert "Protocol: reference" in (out / "results.md").read_text()
    for key in ("image_auroc", "pixel_auroc", "aupro@0.3"):
        assert 0.0 <= saved["rows"][0][key] <= 1.0


def test_evaluate_generated_creates_missing_data_with_documented_defaults(tmp_path, monkeypatch, capsys):
    import mafr.datasets

    calls = []

    def fake_write(root, categories, **kwargs):
        calls.append((Path(root), list(categories), kwargs))
        raise ValueError("stop after recording")

    monkeypatch.setattr(mafr.datasets.synthetic, "write_dataset", fake_write)  # what write_benchmark calls
    (tmp_path / "gen" / "puck").mkdir(parents=True)  # present: not regenerated
    code = main(["evaluate", "--dataset", "generated", "--root", str(tmp_path / "gen"), "--seed", "3", "--quiet"])
    assert code == 2 and capsys.readouterr().err == "mafr: error: stop after recording\n"
    # The report set's categories and data seed; --seed seeds the fits, not the data.
    assert calls == [(tmp_path / "gen", ["block", "cylinder", "disc"],
                      {"n_train": 10, "n_validation": 0, "n_test_good": 12, "n_test_per_defect": 6, "size": 400,
                       "seed": 0, "defect_specs": mafr.datasets.DEFECT_SPECS, "background": "none",
                          "thickness": None})]
    calls.clear()
    main(["evaluate", "--dataset", "generated", "--split", "tuning", "--root", str(tmp_path / "gen"), "--quiet"])
    assert calls[0][1] == ["dome", "ring", "plate", "tile", "shaft"] and calls[0][2]["seed"] == 1000
    calls.clear()
    main(["evaluate", "--dataset", "generated", "--split", "tuning", "--difficulty", "hard", "--root",
          str(tmp_path / "gen"), "--quiet"])
    kwargs = calls[0][2]
    assert kwargs["seed"] == 6000 and kwargs["defect_specs"] is mafr.datasets.HARD_DEFECT_SPECS
    assert (kwargs["n_test_good"], kwargs["n_test_per_defect"]) == (30, 15)


def test_generate_and_preprocess(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "g"), "--category", "ring", "--n-train", "2", "--n-validation", "0",
                 "--n-test-good", "1", "--n-test-per-defect", "0", "--size", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["categories"] == ["ring"] and report["counts"] == {"train": 2, "test": 1}
    assert sorted(p.name for p in (tmp_path / "g" / "ring" / "train" / "good" / "xyz").iterdir()) == ["000.tiff", "001.tiff"]

    # Generated parts without a table give the plane fit nothing to work on: a clean error.
    assert main(["preprocess", str(tmp_path / "g"), str(tmp_path / "p"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mafr: error: ") and "too few valid points" in err and err.count("\n") == 1

    write_dataset(tmp_path / "t", ["puck"], n_train=1, n_validation=0, n_test_good=0, n_test_per_defect=0,
                  size=64, background="plane")
    assert main(["preprocess", str(tmp_path / "t"), str(tmp_path / "tp"), "--category", "puck", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n_parts"] == 1
    xyz = tifffile.imread(tmp_path / "tp" / "puck" / "train" / "good" / "xyz" / "000.tiff")
    assert xyz.shape == (100, 100, 3)  # padded to a multiple of 100, table removed
    raw = tifffile.imread(tmp_path / "t" / "puck" / "train" / "good" / "xyz" / "000.tiff")
    assert (xyz != 0).any(-1).sum() < (raw != 0).any(-1).sum()


def test_bad_input_exits_2_with_one_clean_line(ws, tmp_path, capsys):
    proc = run("predict", ws["det"], tmp_path / "missing.png", tmp_path / "missing.tiff")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"mafr: error: input not found: {tmp_path / 'missing.png'}\n"

    def error(argv):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("mafr: error: ") and err.count("\n") == 1 and "Traceback" not in err
        return err

    (tmp_path / "empty").mkdir()
    assert "no parts found in" in error(["fit", str(tmp_path / "empty"), str(tmp_path / "o"), "--quiet"])
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(ws["root"] / "puck" / "train" / "good" / "rgb" / "000.png", half / "a.png")
    err = error(["fit", str(half), str(tmp_path / "o")])
    assert "1 image(s)" in err and err.rstrip().endswith("have no point cloud (.tiff/.tif/.npy): a")
    assert "has no point cloud" in error(["predict", str(ws["det"]), str(half / "a.png")])
    (tmp_path / "bad.json").write_text("{not json")
    assert "is not valid JSON" in error(["fit", str(ws["root"] / "puck"), str(tmp_path / "o"), "--config", str(tmp_path / "bad.json")])
    (tmp_path / "bad.json").write_text('{"train": {"steps": 0}}')
    assert "invalid config: train.steps: Input should be greater than or equal to 1" in error(
        ["fit", str(ws["root"] / "puck"), str(tmp_path / "o"), "--config", str(tmp_path / "bad.json")])
    assert "detector directory not found" in error(["info", str(tmp_path / "nowhere")])
    assert "is not a local directory" in error(["info", "nobody/no-such-detector"])  # offline Hub look-up


@pytest.mark.parametrize("argv", [[], ["fit"], ["predict"], ["evaluate"], ["preprocess"], ["generate"], ["convert"],
                                  ["convert", "pointmae"], ["convert", "reference"], ["info"]])
def test_help_has_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text
    assert (f"mafr {' '.join(argv)} " if argv else "mafr generate ") in text


def test_python_m_mafr():
    proc = subprocess.run([sys.executable, "-m", "mafr", "--version"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mafr {mafr.__version__}"


def test_convert_pointmae(tmp_path, capsys):
    import torch

    from mafr.extractors import PointMAEConfig, PointMAEEncoder

    # A 12-block encoder (the official depth, so the default output blocks apply) of width 24.
    enc = PointMAEEncoder.random(PointMAEConfig(embed_dim=24, num_heads=6), seed=1)
    src = tmp_path / "pointmae_pretrain.pth"
    torch.save({"base_model": {f"module.MAE_encoder.{k}": v for k, v in enc.state_dict().items()}}, src)
    assert main(["convert", "pointmae", str(src), str(tmp_path / "pm"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out_dir": str(tmp_path / "pm")}
    loaded = PointMAEEncoder.from_pretrained(tmp_path / "pm")
    assert loaded.config.depth == 12 and loaded.config.embed_dim == 24
    for k, v in enc.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    assert main(["convert", "pointmae", str(tmp_path / "nope.pth"), str(tmp_path / "pm2")]) == 2
    assert "Point-MAE checkpoint" in capsys.readouterr().err and not (tmp_path / "pm2").exists()
