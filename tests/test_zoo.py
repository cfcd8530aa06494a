"""The embedded pair: offline loading, files against the manifest, and the build itself."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from specnb import ModelSpec, load
from specnb.models import check_pair
from specnb.zoo import ZOO_ROOT, available, resolve
from specnb.zoo import train as zoo_train
from specnb.zoo.build import EDGE, CLOUD, build, file_hashes, quick_settings
from specnb.zoo.evaluate import replay_rounds, repeated_fraction
from specnb.zoo.train import Shape, TrainSettings, new_model, train

MANIFEST = ZOO_ROOT.parent / "manifest.json"


@pytest.fixture
def offline(monkeypatch):
    """No network: the hub must never be asked."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_both_models_load_offline_and_share_a_tokenizer(offline):
    assert {EDGE, CLOUD} <= set(available())
    edge, cloud = load(ModelSpec("zoo:" + EDGE)), load(ModelSpec("zoo:" + CLOUD))
    assert check_pair(edge, cloud) == len(cloud.tokenizer)
    for m in (edge, cloud):
        assert type(m.model).__name__ == "LlamaForCausalLM"
        assert m.dtype == torch.float32 and m.model.dtype == torch.float32
        eos = m.tokenizer.eos_token_id
        assert eos is not None and m.model.config.eos_token_id == eos
        assert m.tokenizer.decode(m.tokenizer("def f(x):\n    return x")["input_ids"]) \
            == "def f(x):\n    return x"
    assert cloud.model.num_parameters() > 3 * edge.model.num_parameters()


def test_committed_files_match_the_manifest():
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["files"] == file_hashes(ZOO_ROOT)
    assert {f"{EDGE}/model.safetensors", f"{CLOUD}/model.safetensors"} <= set(manifest["files"])
    size = sum(p.stat().st_size for p in ZOO_ROOT.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    config = json.loads((resolve(CLOUD) / "config.json").read_text())
    assert config["dtype"] == "bfloat16"


def test_manifest_records_provenance_and_quality():
    manifest = json.loads(MANIFEST.read_text())
    for key in ("settings", "corpus", "validation", "quality_builtin_code", "build_seconds",
                "machine", "git_commit"):
        assert key in manifest
    assert manifest["corpus"]["train_tokens"] > manifest["corpus"]["val_tokens"] > 0
    assert 0.0 <= manifest["quality_builtin_code"]["acceptance"]["4"] <= 1.0
    assert manifest["speed_builtin_code"]["autoregressive_optimized_tokens_per_s"] > 0


def test_replay_rounds_follows_greedy_verification():
    # accept 2 (+ the correction), then 4 (+ the bonus token), then one token left: no draft
    drafted, accepted, rounds = replay_rounds([True, True, False] + [True] * 4 + [True, True], 4)
    assert (drafted, accepted, rounds) == (4 + 4 + 0, 2 + 4, 3)
    assert replay_rounds([False] * 5, 4) == (4 + 3 + 2 + 1, 0, 5)
    assert replay_rounds([], 4) == (0, 0, 0)


def test_repeated_fraction_finds_loops():
    assert repeated_fraction(list(range(20))) == 0.0
    assert repeated_fraction([1, 2, 3, 4] * 5) > 0.7


def _tiny_run(tmp_path, name, steps, interrupt_at=None, monkeypatch=None):
    stream = torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(0))
    model = new_model(Shape(width=32, layers=1, heads=2, ffn=64, context=64), 50, 0, seed=3)
    settings = TrainSettings(steps=steps, batch=4, seq=16, lr=1e-2, seed=5, warmup=2,
                             checkpoint_s=0.0, bf16_autocast=False)
    if interrupt_at is not None:
        real = zoo_train.batch_at

        def stop(stream, step, *args):
            if step == interrupt_at:
                raise KeyboardInterrupt
            return real(stream, step, *args)

        monkeypatch.setattr(zoo_train, "batch_at", stop)
        with pytest.raises(KeyboardInterrupt):
            train(model, stream, settings, tmp_path / name, "t")
        monkeypatch.setattr(zoo_train, "batch_at", real)
        model = new_model(Shape(width=32, layers=1, heads=2, ffn=64, context=64), 50, 0, seed=3)
    summary = train(model, stream, settings, tmp_path / name, "t")
    return model, summary


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight, s1 = _tiny_run(tmp_path, "a.ckpt", steps=8)
    resumed, s2 = _tiny_run(tmp_path, "b.ckpt", steps=8, interrupt_at=5, monkeypatch=monkeypatch)
    assert s1["steps"] == s2["steps"] == 8
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_quick_build_end_to_end(tmp_path, offline):
    manifest = build(quick_settings(), tmp_path / "out", tmp_path / "work")
    models = tmp_path / "out" / "models"
    assert manifest["files"] == file_hashes(models)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert manifest["validation"]["cloud_val_loss"] > 0
    assert set(manifest["quality_builtin_code"]["acceptance"]) == {"2", "3", "4", "5", "6"}
    edge, cloud = (load(ModelSpec(str(models / n))) for n in (EDGE, CLOUD))
    assert check_pair(edge, cloud) == quick_settings().vocab_size
    digest = hashlib.sha256((models / CLOUD / "model.safetensors").read_bytes()).hexdigest()
    # a re-run finds every phase done and writes the same weights
    again = build(quick_settings(), tmp_path / "out", tmp_path / "work")
    assert again["files"][f"{CLOUD}/model.safetensors"] == digest
