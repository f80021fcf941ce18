"""A tiny random BERT end to end through `da fit` on text this test generates: token batches (dicts) flow through the
same DomainDataModule and TransferModule as images, every loss sees pooled features; and the frozen-feature path."""

import json
import random

import pytest
import torch

pytest.importorskip("transformers")

from da.cli import run_cli  # noqa: E402
from da.models.text import write_tiny_bert  # noqa: E402

POSITIVE, NEGATIVE = ["great", "good", "love"], ["bad", "awful", "hate"]
FILLERS = {"books": "the novel author plot chapter story page reads".split(),
           "kitchen": "the blender pan knife lid kettle toaster works".split()}


def _write_domain(path, domain, n, seed):
    """``n`` reviews: 4-9 domain words with one sentiment word at a random place; label = its polarity."""
    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLERS[domain]) for _ in range(rng.randint(4, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        lines.append(f"{' '.join(words)},{'pos' if label else 'neg'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is ~10x faster than two on a shared, busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("textdata")
    _write_domain(root / "books.csv", "books", 160, seed=1)
    _write_domain(root / "kitchen.csv", "kitchen", 160, seed=2)
    words = POSITIVE + NEGATIVE + FILLERS["books"] + FILLERS["kitchen"]
    model = write_tiny_bert(root / "tinybert", words, hidden=32, layers=2, seed=0)
    return root, model


def _common(root, run_dir, steps=60):
    return ["fit", "--data.sources", "[textfile/books]", "--data.target", "textfile/kitchen", "--data.root", str(root),
            "--data.batch_size", "16", "--data.num_workers", "0", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu", "--run_dir", str(run_dir)]


def _record(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def test_tiny_bert_fine_tuning_with_dann_end_to_end(text_task, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    root, model = text_task
    run = tmp_path / "run"
    cli = run_cli(_common(root, run) + [
        "--data.options", json.dumps({"tokenizer": model, "max_length": 16}),
        "--model.backbone", "hf", "--model.backbone_args", json.dumps({"name_or_path": model, "pooling": "mean"}),
        "--model.lr", "0.003", "--model.losses", json.dumps([{"class_path": "da.losses.DomainAdversarialLoss",
                                                             "init_args": {"weight": 0.1, "hidden": 16}}])])
    rec = _record(run)
    assert rec["status"] == "finished" and rec["task"] == "textfile/books->textfile/kitchen"
    assert rec["config"]["model"]["backbone"] == "hf"
    m = rec["metrics"]
    for key in ("train/cls", "train/dann", "test/source_acc", "test/target_acc"):
        assert key in m, key
    # one sentiment word decides the label and both domains share it: a learnt encoder transfers far above chance
    assert m["test/source_acc"] >= 0.9 and m["test/target_acc"] >= 0.8
    # the encoder was fine-tuned (not frozen), and its batches were dynamically padded token dicts
    assert "backbone.model.encoder.layer.0.attention.self.query.weight" in cli.model.pretrained_parameter_names()
    batch = next(iter(cli.datamodule.train_dataloader()))
    x_s = batch[0]["source"][0] if isinstance(batch, tuple) else batch["source"][0]
    assert set(x_s) >= {"input_ids", "attention_mask"} and x_s["input_ids"].shape[1] <= 12  # longest = 9 + 1 + 2


def test_frozen_feature_path_trains_an_mlp_head(text_task, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    root, model = text_task
    run = tmp_path / "frozen"
    cli = run_cli(_common(root, run, steps=40) + [
        "--data.options", json.dumps({"encoder": model, "max_length": 16, "progress": False}),
        "--model.backbone", "mlp", "--model.backbone_args", "{hidden: [16]}"])
    rec = _record(run)
    assert rec["status"] == "finished" and "test/target_acc" in rec["metrics"]
    assert cli.datamodule.input_shape == [32]  # the tiny encoder's hidden size
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.pt"))) == 2  # books and kitchen, embedded once
    assert 0.0 <= rec["metrics"]["test/target_acc"] <= 1.0
    assert torch.is_tensor(cli.datamodule.target_train.x) and cli.datamodule.target_train.x.dtype == torch.float32
