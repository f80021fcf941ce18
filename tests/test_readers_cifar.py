"""CIFAR-10/100 readers on generated pickle batches, and the CIFAR-10 -> CIFAR-100 parameter transfer end to end."""

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import Callback

from da.cli import run_cli
from da.data.domain import load_domain
from da.data.readers.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, format_cifar, \
    read_cifar_pickle

REPO = Path(__file__).resolve().parents[1]


def _dump(path, obj, bytes_keys=False):
    if bytes_keys:  # as Python 2 wrote them when read back with encoding="bytes"
        obj = {k.encode(): ([c.encode() for c in v] if k.endswith("names") else v) for k, v in obj.items()}
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _images(rng, y, n_classes):
    """Class-coloured noise: class c has red mean c / n_classes (learnable, not trivial)."""
    x = rng.integers(0, 120, size=(len(y), 3, 32, 32)).astype(np.int64)
    x[:, 0] += (135 * y / max(n_classes - 1, 1)).astype(np.int64)[:, None, None]
    return x.astype(np.uint8).reshape(len(y), 3072)


def make_cifar10(root, n_train=60, n_test=60, bytes_keys=False, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % 10
    x_train = _images(rng, y_train, 10)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
        _dump(folder / f"data_batch_{i + 1}", {"data": x_train[part], "labels": y_train[part].tolist(),
                                               "batch_label": f"training batch {i + 1} of 5"}, bytes_keys)
    y_test = (np.arange(n_test) * 7) % 10
    x_test = _images(rng, y_test, 10)
    _dump(folder / "test_batch", {"data": x_test, "labels": y_test.tolist()}, bytes_keys)
    _dump(folder / "batches.meta", {"label_names": [f"c10_{i}" for i in range(10)], "num_vis": 3072}, bytes_keys)
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def make_cifar100(root, n_train=200, n_test=100, seed=1):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = np.arange(n) % 100
        x = _images(rng, fine, 100)
        _dump(folder / split, {"data": x, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()})
        out[split] = (x, fine)
    _dump(folder / "meta", {"fine_label_names": [f"f{i:02d}" for i in range(100)],
                            "coarse_label_names": [f"g{i:02d}" for i in range(20)]})
    return out


# ----------------------------------------------------------------------------------------------- readers

@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_reads_official_split_and_normalises(tmp_path, bytes_keys):
    raw = make_cifar10(tmp_path, n_train=20, n_test=10, bytes_keys=bytes_keys)
    d = load_domain("cifar10/cifar10", root=str(tmp_path))
    assert set(d) == {"train", "test"}
    tr, te = d["train"], d["test"]
    assert tr.x.shape == (20, 3, 32, 32) and te.x.shape == (10, 3, 32, 32) and tr.x.dtype == torch.float32
    assert tr.classes == [f"c10_{i}" for i in range(10)]
    assert tr.y.tolist() == raw["train"][1].tolist() and te.y.tolist() == raw["test"][1].tolist()
    # pixel (image 3, channel G, row 5, col 7): the row layout is R plane, G plane, B plane, each row-major
    p = raw["train"][0][3, 1024 + 5 * 32 + 7] / 255.0
    assert tr.x[3, 1, 5, 7].item() == pytest.approx((p - CIFAR10_MEAN[1]) / CIFAR10_STD[1], abs=1e-5)
    assert tr.meta["normalization"] == {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}


def test_cifar100_fine_and_coarse_labels(tmp_path):
    raw = make_cifar100(tmp_path, n_train=200, n_test=100)
    fine = load_domain("cifar100/cifar100", root=str(tmp_path))
    assert fine["train"].num_classes == 100 and fine["train"].classes[:2] == ["f00", "f01"]
    assert fine["test"].y.tolist() == raw["test"][1].tolist()
    p = raw["test"][0][9, 2 * 1024 + 31] / 255.0  # image 9, blue, row 0, col 31
    assert fine["test"].x[9, 2, 0, 31].item() == pytest.approx((p - CIFAR100_MEAN[2]) / CIFAR100_STD[2], abs=1e-5)
    coarse = load_domain("cifar100/cifar100", root=str(tmp_path), cifar100_labels="coarse")
    assert coarse["train"].num_classes == 20 and coarse["train"].y.tolist() == (raw["train"][1] // 5).tolist()
    with pytest.raises(ValueError, match="unknown cifar100_labels 'fin'; did you mean 'fine'"):
        load_domain("cifar100/cifar100", root=str(tmp_path), cifar100_labels="fin")


def test_format_cifar_resize_and_grey_against_a_naive_reference():
    g = torch.Generator().manual_seed(0)
    px = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    grey = format_cifar(px, CIFAR10_MEAN, CIFAR10_STD, channels=1, chunk=2)
    w = (0.299, 0.587, 0.114)
    luma = sum(w[c] * px[:, c].double() / 255 for c in range(3))
    m = sum(wc * mc for wc, mc in zip(w, CIFAR10_MEAN))
    s = sum(wc * sc for wc, sc in zip(w, CIFAR10_STD))
    assert grey.shape == (3, 1, 32, 32)
    assert torch.allclose(grey[:, 0].double(), (luma - m) / s, atol=1e-5)
    # a constant image stays constant when shrunk to 8x8
    const = torch.full((1, 3, 32, 32), 51, dtype=torch.uint8)
    small = format_cifar(const, CIFAR10_MEAN, CIFAR10_STD, image_size=8)
    assert small.shape == (1, 3, 8, 8)
    assert torch.allclose(small[0, 0], torch.full((8, 8), (0.2 - CIFAR10_MEAN[0]) / CIFAR10_STD[0]), atol=1e-5)
    with pytest.raises(ValueError, match="channels=2"):
        format_cifar(const, CIFAR10_MEAN, CIFAR10_STD, channels=2)


def test_missing_cifar_names_the_folder_and_the_download_option(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_domain("cifar10/cifar10", root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and '--data.options "{download: true}"' in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_domain("cifar100/cifar100", root=str(tmp_path))


def test_unknown_cifar_domain_suggests(tmp_path):
    with pytest.raises(ValueError, match="unknown domain of dataset 'cifar10' 'cifar1'; did you mean 'cifar10'"):
        load_domain("cifar10/cifar1", root=str(tmp_path))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_reader_refuses_code_and_rejects_bad_shapes(tmp_path):
    with open(tmp_path / "evil", "wb") as fh:
        pickle.dump({"data": _Evil()}, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.print"):
        read_cifar_pickle(tmp_path / "evil")
    make_cifar10(tmp_path, n_train=10, n_test=5)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": np.zeros((5, 3000), np.uint8), "labels": [0] * 5})
    with pytest.raises(ValueError, match=r"\(n, 3072\).*\(5, 3000\)"):
        load_domain("cifar10/cifar10", root=str(tmp_path))


# ----------------------------------------------------------------------------------------------- end to end

class BackboneAtFitStart(Callback):
    """Saves the backbone's state dict when fitting starts (after init_from, before any step)."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_start(self, trainer, pl_module):
        torch.save({k: v.detach().cpu().clone() for k, v in pl_module.backbone.state_dict().items()}, self.path)


TINY = ["--model.backbone", "lenet_bn", "--model.backbone_args", "{width: 4, out_features: 16}",
        "--data.batch_size", "8", "--data.eval_batch_size", "64", "--data.num_workers", "0",
        "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu"]


def _record(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def test_cifar10_to_cifar100_parameter_transfer_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = tmp_path / "data"
    make_cifar10(data)
    make_cifar100(data)
    warnings.simplefilter("ignore")
    src = tmp_path / "cifar10"
    run_cli(["fit", "--config", "configs/data/cifar10.yaml", "--data.root", str(data), *TINY,
             "--trainer.max_steps", "6", "--run_dir", str(src)])
    rec = _record(src)
    assert rec["status"] == "finished" and rec["task"] == "cifar10/cifar10->cifar10/cifar10"
    assert rec["split_info"]["target"]["split"] == "official" and rec["split_info"]["target"]["test"] == 60
    # 6 training images per class, val_fraction 0.1: round(0.6) = 1 per class held out for validation
    assert rec["split_info"]["sources"]["cifar10/cifar10"] == {"train": 50, "val": 10, "test": 60, "label_noise": 0.0}
    ckpt = src / "checkpoints" / "last.ckpt"

    # direct evaluation of the CIFAR-10 checkpoint reproduces the accuracy its fit recorded
    run_cli(["test", "--config", "configs/data/cifar10.yaml", "--data.root", str(data), *TINY,
             "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "c10_test")])
    assert _record(tmp_path / "c10_test")["metrics"]["test/target_acc"] == \
        pytest.approx(rec["metrics"]["test/target_acc"], abs=1e-7)

    # fine-tune on CIFAR-100 from it: the backbone starts at the checkpoint's weights, the 100-way head is new
    snap = tmp_path / "backbone_at_start.pt"
    ft = tmp_path / "cifar100"
    cli = run_cli(["fit", "--config", "configs/data/cifar100_finetune.yaml", "--data.root", str(data), *TINY,
                   "--trainer.max_steps", "3", "--model.init_from", str(ckpt), "--run_dir", str(ft),
                   "--trainer.callbacks+=tests.test_readers_cifar.BackboneAtFitStart",
                   "--trainer.callbacks.path", str(snap)])
    source_state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    start = torch.load(snap, weights_only=True)
    assert set(start) == {k[len("backbone."):] for k in source_state if k.startswith("backbone.")}
    for k, v in start.items():
        assert torch.equal(v, source_state[f"backbone.{k}"]), k
    # and training moved it (the snapshot was taken before the first step, not after the last)
    assert not torch.equal(cli.model.backbone.state_dict()["conv1.0.weight"], start["conv1.0.weight"])
    assert cli.model.classifier.weight.shape == (100, 16) and source_state["classifier.weight"].shape == (10, 16)
    ft_rec = _record(ft)
    assert ft_rec["status"] == "finished" and ft_rec["method"] == "finetune"
    assert ft_rec["init_from"]["head_transferred"] is False and ft_rec["init_from"]["path"] == str(ckpt)
    assert ft_rec["init_from"]["skipped"] == ["classifier.weight", "classifier.bias"]
    assert ft_rec["split_info"]["target"]["test"] == 100 and "test/target_acc" in ft_rec["metrics"]
