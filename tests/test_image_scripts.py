"""scripts/train_image.py and scripts/sample_images.py end to end, on the 8x8 digits smoke set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.name=digits", "data.train_limit=200", "data.val_limit=50", "image_model.image_size=8",
        "image_model.unet.channels=[16,32]", "image_model.unet.attention_levels=[1]", "image_model.unet.embed_dim=32",
        "image_training.max_minutes=null", "image_training.max_steps=4", "image_training.batch_size=16",
        "image_training.warmup_steps=1", "+image_training.progress=false", "samples_per_class=2"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_then_sample_and_score(tmp_path):
    run_dir = tmp_path / "run"
    run("train_image.py", *TINY, f"run_dir={run_dir}")
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "samples.png").is_file()
    assert json.loads((run_dir / "train_summary.json").read_text())["steps"] == 4

    out = tmp_path / "samples"
    printed = run("sample_images.py", "--model", str(run_dir), "--out", str(out), "--dataset", "digits",
                  "--steps", "3", "--per-class", "1", "--evaluate", "40", "--guidance", "1", "3",
                  "--classifier-dir", str(tmp_path / "classifiers")).stdout
    assert (out / "grid_ddim3_g1.png").is_file() and (out / "grid_ddim3_g3.png").is_file()
    report = json.loads((out / "quality.json").read_text())
    assert [r["guidance_scale"] for r in report["rows"]] == [1.0, 3.0]
    assert all(r["n_samples"] == 40 and 0 <= r["class_accuracy"] <= 1 for r in report["rows"])
    assert report["floor"]["fid"] < min(r["fid"] for r in report["rows"])  # 4 training steps are far from real
    assert "real train vs test (floor)" in printed and (out / "quality.png").is_file()

    table = run("sample_images.py", "--model", str(run_dir), "--out", str(out), "--dataset", "digits",
                "--per-class", "0", "--table", "20", "--classifier-dir", str(tmp_path / "classifiers")).stdout
    rows = json.loads((out / "sampler_table.json").read_text())["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 1000), ("ddpm", 100), ("ddim", 50), ("ddim", 20),
                                                          ("ddim", 10), ("dpmsolver++", 20), ("dpmsolver++", 10)]
    assert rows[0]["seconds_per_image"] > rows[-1]["seconds_per_image"]  # 1000 steps cost more than 10
    assert "dpmsolver++" in table and (out / "sampler_table.png").is_file()
