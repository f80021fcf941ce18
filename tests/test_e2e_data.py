"""`da fit` end to end on the real data in ../shared/data (skipped cleanly when it is absent): Office-31 images with a
ResNet-18, the DANN Amazon features, the JDA MNIST -> USPS digits, and unreadable images in an image-folder tree."""

import json
import math
import shutil
import warnings

import pytest

from da.cli import run_cli
from da.errors import UserError

pytestmark = pytest.mark.data

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"]


def _record(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def _repo(monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)


def test_office31_amazon_to_webcam_resnet18(shared_data, tmp_path, monkeypatch):
    _repo(monkeypatch)
    run = tmp_path / "a2w"
    warnings.simplefilter("ignore")
    run_cli(["fit", "--config", "configs/data/office31.yaml", "--data.root", str(shared_data),
             "--data.sources", "[office31/amazon]", "--data.target", "office31/webcam",
             "--model.backbone", "resnet18", "--model.backbone_args", "{pretrained: false}",
             "--data.options", "{image_size: 64}", "--data.batch_size", "8", "--data.eval_batch_size", "16",
             "--data.num_workers", "0", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
             "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2", "--run_dir", str(run), *QUIET])
    rec = _record(run)
    assert rec["status"] == "finished" and rec["task"] == "office31/amazon->office31/webcam"
    info = rec["split_info"]
    assert info["num_classes"] == 31 and info["classes"][:3] == ["back_pack", "bike", "bike_helmet"]
    # amazon: 2817 images, 10% per class held out (stratified); webcam: 795, transductive (train = test)
    src = info["sources"]["office31/amazon"]
    assert src["train"] + src["val"] == 2817 and 270 <= src["val"] <= 290 and src["test"] == src["val"]
    assert info["target"]["split"] == "transductive" and info["target"]["train"] == info["target"]["test"] == 795
    for key in ("val/source_acc", "test/target_acc", "test/target_acc_macro", "train/loss"):
        assert 0 <= rec["metrics"][key] < (1.0001 if "acc" in key else 100), key
    assert rec["history"][0]["step"] == 3
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_amazon_dann_features_learn_sentiment_above_chance(shared_data, tmp_path, monkeypatch):
    _repo(monkeypatch)
    run = tmp_path / "b2d"
    run_cli(["fit", "--config", "configs/data/amazon_dann.yaml", "--config", "configs/benchmark/amazon_dann.yaml",
             "--data.root", str(shared_data),
             "--data.sources", "[amazon_dann/books]", "--data.target", "amazon_dann/dvd",
             "--trainer.max_steps", "300", "--trainer.val_check_interval", "300", "--run_dir", str(run), *QUIET])
    rec = _record(run)
    assert rec["status"] == "finished" and rec["task"] == "amazon_dann/books->amazon_dann/dvd"
    info = rec["split_info"]
    assert info["classes"] == ["negative", "positive"]
    # books: the 2000 official training reviews, 10% held out; dvd: official 2000 train / 3586 test
    assert info["sources"]["amazon_dann/books"]["train"] == 1800 and info["sources"]["amazon_dann/books"]["val"] == 200
    assert info["target"]["split"] == "official" and info["target"]["test"] == 3586
    # bag-of-words sentiment is learnable within a few epochs; chance is 0.5 (DANN's table: about 0.75-0.78)
    assert rec["metrics"]["val/source_acc"] > 0.7
    assert rec["metrics"]["test/target_acc"] > 0.7  # measured 0.80 (seed 0)


def test_jda_mnist_to_usps_dann_a_few_steps(shared_data, tmp_path, monkeypatch):
    _repo(monkeypatch)
    run = tmp_path / "m2u"
    run_cli(["fit", "--config", "configs/data/jda_mnist_usps.yaml", "--config",
             "configs/benchmark/digits_lenet_bn_adam.yaml", "--config", "configs/method/dann.yaml",
             "--data.root", str(shared_data), "--trainer.max_steps", "10", "--trainer.val_check_interval", "10",
             "--run_dir", str(run), *QUIET])
    rec = _record(run)
    assert rec["status"] == "finished" and rec["task"] == "jda/mnist->jda/usps" and rec["method"] == "dann"
    # 10% of each MNIST class (196, 227, 207, 202, 196, 179, 191, 206, 195, 201), rounded:
    # 20 + 23 + 21 + 20 + 20 + 18 + 19 + 21 + 20 + 20 = 202 held out; no official test split, so test = val
    assert rec["split_info"]["sources"]["jda/mnist"] == {"train": 1798, "val": 202, "test": 202, "label_noise": 0.0}
    assert rec["split_info"]["target"]["train"] == rec["split_info"]["target"]["test"] == 1800
    for key in ("train/dann", "train/dann_weight", "test/target_acc", "val/source_acc"):
        assert key in rec["metrics"], key
    # the GRL coefficient of the last step (p = 9 / 10) is 2 / (1 + exp(-10 p)) - 1; the loss weight stays 1
    assert rec["metrics"]["train/dann_grl_coeff"] == pytest.approx(2 / (1 + math.exp(-9)) - 1, rel=1e-5)
    assert rec["metrics"]["train/dann_weight"] == 1.0


def _tiny_tree(shared_data, root, per_class=6):
    """``root/{a,b}/{back_pack,bike}/`` with real Office-31 JPEGs (amazon -> a, webcam -> b)."""
    for dom, src in (("a", "amazon"), ("b", "webcam")):
        for cls in ("back_pack", "bike"):
            (root / dom / cls).mkdir(parents=True)
            for f in sorted((shared_data / "office31" / src / cls).glob("*.jpg"))[:per_class]:
                shutil.copy(f, root / dom / cls / f.name)


def _folder_args(root, run, options):
    return ["fit", "--data.root", str(root), "--data.sources", "[imagefolder/a]", "--data.target", "imagefolder/b",
            "--data.options", options, "--data.batch_size", "4", "--data.eval_batch_size", "8",
            "--model.backbone", "lenet_bn", "--model.backbone_args", "{width: 4, out_features: 16}",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--run_dir", str(run), *QUIET]


def test_unreadable_image_is_skipped_and_counted_or_fails_by_option(shared_data, tmp_path):
    root = tmp_path / "tree"
    _tiny_tree(shared_data, root)
    bad = root / "a" / "bike" / "zz_broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning, match=r"imagefolder/a: skipped 1 unreadable image\(s\).*zz_broken\.jpg"):
        run_cli(_folder_args(root, tmp_path / "skip", "{image_size: 32, on_bad_image: skip}") +
                ["--data.num_workers", "0"])
    rec = _record(tmp_path / "skip")
    assert rec["status"] == "finished" and rec["split_info"]["classes"] == ["back_pack", "bike"]
    src = rec["split_info"]["sources"]["imagefolder/a"]
    assert src["train"] + src["val"] == 12  # 2 classes x 6 readable images; the broken file is not one of them
    with pytest.raises(UserError, match=r"unreadable image '.*zz_broken\.jpg'.*on_bad_image='skip'"):
        run_cli(_folder_args(root, tmp_path / "error", "{image_size: 32, on_bad_image: error}") +
                ["--data.num_workers", "0"])


def test_image_that_fails_to_decode_in_a_worker_is_skipped_or_named(shared_data, tmp_path):
    root = tmp_path / "tree"
    _tiny_tree(shared_data, root, per_class=4)
    victim = sorted((root / "b" / "bike").glob("*.jpg"))[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # the header parses, the pixel data is cut off
    with pytest.warns(UserWarning, match=r"skipped 1 undecodable image"):  # on_bad_image=skip (the default)
        run_cli(_folder_args(root, tmp_path / "skip", "{image_size: 32}") + ["--data.num_workers", "1"])
    rec = _record(tmp_path / "skip")
    assert rec["status"] == "finished" and rec["split_info"]["undecodable_images"]["count"] == 1
    assert rec["split_info"]["undecodable_images"]["files"] == [str(victim)]
    with pytest.raises(UserError, match=r"cannot decode image '.*" + victim.name.replace(".", r"\.")):
        run_cli(_folder_args(root, tmp_path / "run", "{image_size: 32, on_bad_image: error}") +
                ["--data.num_workers", "1"])
    rec = _record(tmp_path / "run")
    assert rec["status"] == "failed" and victim.name in rec["error"] and "DataLoader worker" in rec["error"] and "DataLoader worker" in rec["error"]
