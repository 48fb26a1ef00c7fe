"""Checkpoints and policy directories that survive damage: manifests, fallback on resume, a checked
config.json schema, durable writes. Every probe names the damaged file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import diffusion_policy.core.checkpoint as checkpoint_module
from diffusion_policy.core.artifact import CONFIG_FILE
from diffusion_policy.core.checkpoint import MANIFEST, CheckpointError, save_json, verify_manifest, write_manifest
from diffusion_policy.policy import DiffusionPolicy, load_policy
from tests.test_policy import normalizer, small_config
from tests.test_trainer import CrashAt, make_trainer


@pytest.fixture
def saved_policy(tmp_path) -> Path:
    torch.manual_seed(0)
    DiffusionPolicy(small_config(), normalizer()).save(tmp_path / "p")
    return tmp_path / "p"


def flip_byte(path: Path, offset_from_end: int = 3) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_with_its_sha256(saved_policy):
    lines = (saved_policy / MANIFEST).read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in lines) == ["config.json", "model.safetensors",
                                                             "normalizer.safetensors"]
    for line in lines:
        digest, name = line.split("  ")
        assert digest == hashlib.sha256((saved_policy / name).read_bytes()).hexdigest()


def test_flipped_tensor_bytes_are_named_not_loaded(saved_policy):
    flip_byte(saved_policy / "model.safetensors")  # inside the tensor data: safetensors itself cannot tell
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged: its sha256 is [0-9a-f]{64}"):
        load_policy(saved_policy)


def test_missing_file_is_named(saved_policy):
    (saved_policy / "normalizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"normalizer\.safetensors is missing"):
        load_policy(saved_policy)


def test_truncated_weights_without_manifest_name_the_file(saved_policy):
    (saved_policy / MANIFEST).unlink()
    path = saved_policy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        load_policy(saved_policy)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda meta: "{not json", r"config\.json is not valid JSON"),
    (lambda meta: [meta], r"config\.json holds a JSON list; expected an object"),
    (lambda meta: {k: v for k, v in meta.items() if k != "config"}, r"top-level keys \['format_version', 'kind'\]"),
    (lambda meta: meta | {"extra": 1}, r"top-level keys \['config', 'extra', 'format_version', 'kind'\]"),
    (lambda meta: meta | {"format_version": 99}, r"format_version=99; this version of the package reads "
                                                 r"format_version=1"),
    (lambda meta: meta | {"kind": "teleport"}, r"kind='teleport'; expected one of \['diffusion', 'regression'\]"),
    (lambda meta: meta | {"config": meta["config"] | {"horizon": "16"}},
     r"config\.json: config field 'horizon' is '16' \(str\); expected an integer"),
    (lambda meta: meta | {"config": meta["config"] | {"network": meta["config"]["network"] | {"kernel_size": 3.5}}},
     r"config field 'network\.kernel_size' is 3\.5 \(float\); expected an integer"),
    (lambda meta: meta | {"config": meta["config"] | {"horizn": 16}}, r"unknown option\(s\) \['horizn'\]"),
])
def test_config_schema_is_checked_naming_the_file(saved_policy, edit, message):
    """Hand-edited config.json (manifest rewritten to match, as a user's tool might): refused by name."""
    file = saved_policy / CONFIG_FILE
    edited = edit(json.loads(file.read_text()))
    file.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    write_manifest(saved_policy)
    with pytest.raises(CheckpointError, match=message) as info:
        load_policy(saved_policy)
    assert str(file) in str(info.value)


def test_edited_config_without_new_manifest_is_damage(saved_policy):
    file = saved_policy / CONFIG_FILE
    file.write_text(file.read_text().replace('"horizon": 8', '"horizon": 16'))
    with pytest.raises(CheckpointError, match=r"config\.json is damaged"):
        load_policy(saved_policy)


def test_directory_without_manifest_loads_with_a_warning(saved_policy, caplog):
    (saved_policy / MANIFEST).unlink()
    assert isinstance(load_policy(saved_policy), DiffusionPolicy)
    assert "integrity cannot be checked" in caplog.text


def test_malformed_manifest_line_is_named(saved_policy):
    (saved_policy / MANIFEST).write_text("abc model.safetensors\n")
    with pytest.raises(CheckpointError, match=r"MANIFEST\.sha256 line 1 is 'abc model\.safetensors'"):
        verify_manifest(saved_policy)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    """A damaged latest checkpoint: resume warns with its name and continues from the one before,
    and the finished run equals an uninterrupted one bit for bit."""
    straight = make_trainer(tmp_path / "a")
    straight.fit()

    run = make_trainer(tmp_path / "b", callbacks=[CrashAt(35)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run.fit()
    latest = run.latest_checkpoint()
    assert latest.name == "step_00000030"
    target = latest / "train_state.pt"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip":
        flip_byte(latest / "model.safetensors")
    else:
        target.unlink()

    resumed = make_trainer(tmp_path / "b")
    with pytest.warns(UserWarning, match=r"resumed from step_00000020, not the newest checkpoint: .*step_00000030"):
        assert resumed.resume()
    assert resumed.step == 20
    resumed.fit()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_with_every_checkpoint_damaged_names_each(tmp_path):
    run = make_trainer(tmp_path, max_steps=20)
    run.fit()
    for path in run.checkpoints():
        flip_byte(path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*step_00000020.*step_00000010"):
        make_trainer(tmp_path).resume()


def test_checkpoint_files_and_directories_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real = checkpoint_module._fsync
    monkeypatch.setattr(checkpoint_module, "_fsync", lambda path: (synced.append(Path(path).name), real(path)))
    run = make_trainer(tmp_path, max_steps=10)
    run.fit()
    for name in ("model.safetensors", "ema.safetensors", "train_state.pt", MANIFEST,
                 "checkpoints", ".latest.tmp"):
        assert name in synced, name
    assert not list(tmp_path.rglob("*.tmp"))


def test_single_file_write_is_durable(tmp_path, monkeypatch):
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    save_json({"a": 1}, tmp_path / "x.json")
    assert len(calls) == 2  # the file before its rename, the directory after
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
