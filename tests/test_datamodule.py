"""DomainDataModule: splits, supervision modes, multi-source tags, label noise, class alignment, loaders."""

import pytest
import torch

from da.data.datamodule import DomainDataModule
from da.data.domain import Domain, register_dataset
from da.data.loaders import TensorBatches, stratified_split


def _dm(**kw):
    args = dict(sources=["blobs/0"], target="blobs/1", batch_size=16, val_fraction=0.1, seed=0)
    args.update(kw)
    dm = DomainDataModule(**args)
    dm.setup("fit")
    return dm


def test_source_splits_are_stratified_and_disjoint():
    dm = _dm()
    info = dm.split_info["sources"]["blobs/0"]
    assert (info["train"], info["val"]) == (270, 30)
    assert dm.source_val[0].class_counts().tolist() == [10, 10, 10]
    # transductive target: all 300 target samples are both the unlabelled training data and the test set
    assert dm.split_info["target"]["split"] == "transductive"
    assert len(dm.target_train) == len(dm.target_test) == 300


def test_splits_depend_only_on_the_seed():
    a, b, c = _dm(seed=1), _dm(seed=1), _dm(seed=2)
    assert torch.equal(a.source_val[0].x, b.source_val[0].x)
    assert not torch.equal(a.source_val[0].x, c.source_val[0].x)


def test_target_fraction_split():
    dm = _dm(target_split=0.5)
    assert len(dm.target_train) == 150 and len(dm.target_test) == 150
    assert dm.target_test.class_counts().tolist() == [50, 50, 50]


def test_training_batches_tag_domains_and_hide_nothing_extra():
    dm = _dm(sources=["blobs/0", "blobs/2"])
    batch = next(iter(dm.train_dataloader()))[0]
    x_s, y_s, d_s = batch["source"]
    assert x_s.shape == (16, 8) and set(d_s.tolist()) <= {0, 1}
    x_t, _, d_t = batch["target"]
    assert (d_t == 2).all()  # target samples carry index num_sources
    assert dm.num_sources == 2 and dm.task == "blobs/0+blobs/2->blobs/1"


def test_few_shot_target_supervision():
    dm = _dm(supervision="target", target_labeled_per_class=2)
    assert len(dm.target_labeled) == 6 and dm.target_labeled.class_counts().tolist() == [2, 2, 2]
    batch = next(iter(dm.train_dataloader()))[0]
    x, y, d = batch["source"]
    assert len(y) == 6 and (d == 1).all()  # batch lowered to the 6 labelled samples, all tagged as target


def test_oracle_uses_all_target_labels():
    dm = _dm(supervision="target")
    assert len(dm.target_labeled) == 300


def test_semi_supervised_concatenates_source_and_labelled_target():
    dm = _dm(supervision="source+target", target_labeled_per_class=5)
    parts = dm._labelled_domains()
    assert [d for _, d in parts] == [0, 1] and len(parts[1][0]) == 15


def test_label_noise_flips_exactly_the_requested_fraction():
    clean, noisy = _dm(), _dm(source_label_noise=0.4)
    flipped = (clean.source_train[0].y != noisy.source_train[0].y).float().mean().item()
    assert flipped == pytest.approx(0.4, abs=0.005)
    assert noisy.split_info["sources"]["blobs/0"]["label_noise"] == 0.4


def test_max_source_samples_caps_stratified():
    dm = _dm(max_source_samples=150, val_fraction=0.0)
    assert len(dm.source_train[0]) == 150 and dm.source_train[0].class_counts().tolist() == [50, 50, 50]


@register_dataset("_mismatch", domains=("a", "b", "c"), modality="features")
def _mismatch(domain, root=None, **_):
    classes = {"a": ["cat", "dog"], "b": ["dog", "cat"], "c": ["cat", "cow"]}[domain]
    x = torch.arange(8, dtype=torch.float32).view(4, 2)
    y = torch.tensor([0, 1, 0, 1])
    return {"all": Domain(f"_mismatch/{domain}", classes, y=y, x=x, modality="features")}


def test_classes_are_matched_by_name():
    dm = DomainDataModule(sources=["_mismatch/b"], target="_mismatch/a", batch_size=2, val_fraction=0.0)
    dm.prepare()
    # in b, label 0 is 'dog'; in the target's order 'dog' is 1
    assert dm.source_train[0].y.tolist() == [1, 0, 1, 0]


def test_different_class_sets_are_an_error():
    dm = DomainDataModule(sources=["_mismatch/c"], target="_mismatch/a", batch_size=2, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"different class sets: only in the source: \['cow'\]"):
        dm.prepare()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown supervision 'targt'; did you mean 'target'"):
        DomainDataModule(sources=["blobs/0"], target="blobs/1", supervision="targt")
    with pytest.raises(ValueError, match="must be written '<dataset>/<domain>'"):
        DomainDataModule(sources=["blobs"], target="blobs/1")


def test_tensor_batches_shard_ranks_disjointly():
    x = torch.arange(20)
    shards = [list(TensorBatches((x,), 5, shuffle=True, drop_last=True, seed=3, rank=r, world_size=2))
              for r in range(2)]
    seen = [torch.cat([b[0] for b in s]) for s in shards]
    assert len(shards[0]) == len(shards[1]) == 2
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    one = torch.cat([b[0] for b in TensorBatches((x,), 10, shuffle=True, drop_last=True, seed=3)])
    assert sorted(torch.cat(seen).tolist()) == sorted(one.tolist())  # same epoch permutation as one process


def test_stratified_split_per_class():
    y = torch.tensor([0] * 10 + [1] * 4)
    rest, picked = stratified_split(y, 0.0, seed=0, per_class=3)
    assert torch.bincount(y[picked]).tolist() == [3, 3] and len(rest) == 8


def test_source_free_mode_never_reads_a_source(monkeypatch):
    import da.data.datamodule as dm_mod

    real, read = dm_mod.load_domain, []

    def loader(spec, **kw):
        read.append(spec)
        if spec == "blobs/0":
            raise AssertionError("the source reader was called")
        return real(spec, **kw)

    monkeypatch.setattr(dm_mod, "load_domain", loader)
    dm = _dm(supervision="target_unlabeled")
    assert read == ["blobs/1"] and dm.source_free and dm.eval_domains == ("target",)
    assert dm.task == "blobs/0->blobs/1"  # the sources still name the task (the source model's)
    batch = next(iter(dm.train_dataloader()))[0]
    assert set(batch) == {"target"} and batch["target"][0].shape == (16, 8)
    assert len(dm.val_dataloader()) == len(dm.test_dataloader()) == 1
    assert [len(b[0]) for b in dm.target_train_eval_loader()] == [300]  # in dataset order, eval batch 512
    assert dm.split_info["source_free"] is True and dm.split_info["sources"] == {}
    assert dm.selection_metric is None
    assert DomainDataModule(sources=["blobs/0"], target="blobs/1").selection_metric == "val/source_acc"


def test_unlabeled_ratio_sizes_the_target_batch():
    batch = next(iter(_dm(unlabeled_ratio=3).train_dataloader()))[0]
    assert len(batch["source"][1]) == 16 and len(batch["target"][1]) == 48
    with pytest.raises(ValueError, match="unlabeled_ratio must be > 0"):
        _dm(unlabeled_ratio=0)
