"""`DomainDataModule`: labelled source domain(s), an unlabelled target domain, deterministic splits.

Training batches are ``{"source": (x_s, y_s, d_s), "target": (x_t, y_t)}`` from a ``CombinedLoader`` in
``max_size_cycle`` mode. ``"source"`` is the *labelled* stream: the source domains (``d_s`` = source index), plus the
labelled target samples (``d_s = num_sources``) when ``supervision`` includes the target. ``"target"`` is the target's
unlabelled training split; its labels travel with it only so that diagnostics can be checked, and the module never
uses them for training.

Splits (all from ``seed``, recorded in ``split_info``):

* source: the official train split (or all samples) minus a stratified ``val_fraction`` held out for source validation;
  source test = the official test split when there is one, else the held-out part.
* target: ``target_split="auto"`` uses the official train/test split when the dataset has one, and the transductive
  protocol otherwise (all target samples are the unlabelled training data *and* the test set, as in the JDA, DANN and
  Office-31 protocols); a float ``f`` holds out a stratified fraction ``f`` as the test set instead.
* ``target_labeled_per_class=k`` labels k samples per class of the target training split (few-shot fine-tuning and
  semi-supervised tasks); ``supervision="target"`` trains on them alone (all target training labels when k is None: the
  target oracle), ``"source+target"`` on both.
* ``supervision="target_unlabeled"`` is source-free adaptation (SHOT): the sources name the task but are never read;
  training batches are ``{"target": (x_t, y_t, d_t)}`` alone and evaluation is on the target only (``eval_domains``).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from da.data.domain import Domain, check_same_input_shape, get_dataset, load_domain, parse_domain
from da.data.loaders import TensorBatches, stratified_split
from da.data.relabel import align_classes, with_label_noise, with_transform_ds
from da.data.tagged import Tagged
from da.errors import MissingFileError, UserError

SUPERVISION = ("source", "target", "source+target", "target_unlabeled")


class DomainDataModule(pl.LightningDataModule):
    """Source and target domains for transfer learning.

    Args:
        sources: one or more labelled source domains, ``"<dataset>/<domain>"`` (e.g. ``jda/mnist``).
        target: the target domain.
        root: data root laid out like ``../shared/data`` (default: ``$DA_DATA_ROOT`` or ``./data``).
        supervision: ``source`` (unsupervised DA), ``target`` (target-only: oracle or few-shot fine-tuning),
            ``source+target`` (semi-supervised), ``target_unlabeled`` (source-free: the sources are never loaded).
        target_labeled_per_class: label k target samples per class (None: all, when supervision needs target labels).
        val_fraction: fraction of each source's training split held out for source validation.
        target_split: ``auto``, ``transductive``, ``official`` or a float fraction held out as target test set.
        batch_size: per-process batch size of each stream (labelled and unlabelled).
        eval_batch_size: batch size for validation and test.
        num_workers: worker processes for lazy (image folder, token) datasets; in-memory tensors need none.
        source_label_noise: fraction of each source's training labels replaced by a different random class (a float for
            all sources, or one per source): the controlled way to create negative transfer.
        unlabeled_ratio: the unlabelled (target) training batch is ``round(unlabeled_ratio * batch_size)`` (FixMatch's
            mu; default 1: equal batches).
        max_source_samples: cap each source's training split (stratified, seeded), e.g. the ADDA 2000-image protocol.
        options: keyword options for the dataset loaders (``image_size``, ``channels``, ``tokenizer``, ``encoder``, ...).
        on_device: keep in-memory domains on the training device.
        seed: seed of all splits, label noise and shuffling.
    """

    def __init__(self, sources: Union[str, List[str]] = "builtin/fonts", target: str = "builtin/handwritten",
                 root: Optional[str] = None, supervision: str = "source",
                 target_labeled_per_class: Optional[int] = None, val_fraction: float = 0.1,
                 target_split: Union[str, float] = "auto", batch_size: int = 64, eval_batch_size: int = 512,
                 num_workers: int = 2, source_label_noise: Union[float, List[float]] = 0.0,
                 max_source_samples: Optional[int] = None, options: Optional[Dict[str, Any]] = None,
                 on_device: bool = True, seed: int = 0, unlabeled_ratio: float = 1.0):
        super().__init__()
        self.sources = [sources] if isinstance(sources, str) else list(sources)
        if not self.sources:
            raise ValueError("give at least one source domain: --data.sources [jda/mnist]")
        for spec in self.sources + [target]:
            parse_domain(spec)  # fail early on unknown names
        if supervision not in SUPERVISION:
            from da.errors import unknown_name
            raise unknown_name("supervision", supervision, SUPERVISION)
        if not unlabeled_ratio > 0 or round(unlabeled_ratio * batch_size) < 1:
            raise ValueError(f"unlabeled_ratio must be > 0 and give at least one target sample per batch, got "
                             f"{unlabeled_ratio} x batch_size {batch_size}")
        self.unlabeled_ratio = float(unlabeled_ratio)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        noise = source_label_noise if isinstance(source_label_noise, (list, tuple)) else \
            [source_label_noise] * len(self.sources)
        if len(noise) != len(self.sources) or any(not 0 <= p <= 1 for p in noise):
            raise ValueError(f"source_label_noise must be one value in [0, 1] or one per source, got {source_label_noise}")
        self.target = target
        self.root = root
        self.supervision = supervision
        self.target_labeled_per_class = target_labeled_per_class
        self.val_fraction = val_fraction
        self.target_split = target_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.source_label_noise = [float(p) for p in noise]
        self.max_source_samples = max_source_samples
        self.options = dict(options or {})
        self.on_device = on_device
        self.seed = seed
        self._prepared = False
        self.split_info: Dict[str, Any] = {}

    # ----------------------------------------------------------------- names
    @property
    def num_sources(self) -> int:
        return len(self.sources)

    @property
    def source_free(self) -> bool:
        """True for ``supervision="target_unlabeled"``: no source sample is ever read."""
        return self.supervision == "target_unlabeled"

    @property
    def eval_domains(self) -> tuple:
        """The domain of each validation / test loader, in order."""
        return ("target",) if self.source_free else ("source", "target")

    @property
    def selection_metric(self) -> Optional[str]:
        """What ``best.ckpt`` maximises: the source validation accuracy; None (the latest) when source-free, which has
        no labelled validation data (target labels are never used for selection)."""
        return None if self.source_free else "val/source_acc"

    @property
    def task(self) -> str:
        return "+".join(self.sources) + "->" + self.target

    @property
    def num_classes(self) -> int:
        self.prepare()
        return len(self.classes)

    @property
    def input_shape(self) -> List[int]:
        """Per-sample input shape of in-memory data (``[]`` for lazy token data, whose length varies)."""
        self.prepare()
        if self.target_train.x is not None:
            return list(self.target_train.x.shape[1:])
        x = self.target_train.dataset[0][0]
        return list(x.shape) if isinstance(x, torch.Tensor) else []

    # ----------------------------------------------------------------- loading
    def _load(self, spec: str) -> Dict[str, Domain]:
        """The parts of one domain; a reader's complaint about its files becomes a one-line UserError naming it."""
        try:
            parts = load_domain(spec, root=self.root, **self.options)
        except UserError:
            raise
        except FileNotFoundError as err:
            raise MissingFileError(f"{spec}: {err}") from err
        except (ValueError, KeyError, OSError) as err:  # unreadable or malformed data files
            raise UserError(f"{spec}: {err.args[0] if isinstance(err, KeyError) and err.args else err}") from err
        if not parts:
            raise UserError(f"the loader of {spec} returned no data")
        return parts

    def prepare(self) -> None:
        """Load every domain and make the splits (idempotent; called by ``setup`` and by the shape properties)."""
        if self._prepared:
            return
        seed = self.seed
        loaded = [] if self.source_free else [self._load(s) for s in self.sources]
        tgt = self._load(self.target)
        ref_classes = _classes_of(tgt)
        self.classes = ref_classes

        self.source_train, self.source_val, self.source_test = [], [], []
        info: Dict[str, Any] = {"seed": seed, "num_classes": len(ref_classes), "classes": list(ref_classes),
                                "sources": {}, "target": {}, "source_free": self.source_free}
        for d, (spec, parts) in enumerate(zip(self.sources, loaded)):
            parts = {k: align_classes(v, ref_classes, spec, self.target) for k, v in parts.items()}
            train = parts.get("train", parts.get("all"))
            if self.max_source_samples is not None and len(train) > self.max_source_samples:
                _, keep = stratified_split(train.y, self.max_source_samples / len(train), seed + 7 + d)
                train = train.subset(keep)
            if self.val_fraction > 0:
                rest, val = stratified_split(train.y, self.val_fraction, seed + 11 + d)
                train_part, val_part = train.subset(rest), train.subset(val)
            else:
                train_part, val_part = train, train
            test_part = parts["test"] if "test" in parts else val_part
            if self.source_label_noise[d] > 0:
                train_part = with_label_noise(train_part, self.source_label_noise[d], len(ref_classes), seed + 13 + d)
            self.source_train.append(train_part)
            self.source_val.append(val_part)
            self.source_test.append(test_part)
            info["sources"][spec] = {"train": len(train_part), "val": len(val_part), "test": len(test_part),
                                     "label_noise": self.source_label_noise[d]}

        mode = self.target_split
        if mode == "auto":
            mode = "official" if "train" in tgt and "test" in tgt else "transductive"
        if mode == "official":
            if not ("train" in tgt and "test" in tgt):
                raise ValueError(f"{self.target} has no official train/test split; use --data.target_split "
                                 f"transductive or a fraction such as 0.5")
            t_train, t_test = tgt["train"], tgt["test"]
        elif mode == "transductive":
            t_all = tgt.get("all") or _concat([tgt["train"], tgt["test"]])
            t_train = t_test = t_all
        else:
            frac = float(mode)
            if not 0 < frac < 1:
                raise ValueError(f"target_split must be auto, official, transductive or a fraction in (0, 1), got {mode}")
            t_all = tgt.get("all") or _concat([tgt["train"], tgt["test"]])
            rest, held = stratified_split(t_all.y, frac, seed + 17)
            t_train, t_test = t_all.subset(rest), t_all.subset(held)
        self.target_train, self.target_test = t_train, t_test
        check_same_input_shape([(s, p.get("train", p.get("all"))) for s, p in zip(self.sources, loaded)],
                                (self.target, t_train))
        # a label-free validation view of the target (validators use its predictions; the oracle its labels)
        n_val = min(len(t_train), 2000)
        _, val_idx = stratified_split(t_train.y, n_val / len(t_train), seed + 19) if n_val < len(t_train) else \
            (None, torch.arange(len(t_train)))
        self.target_val = t_train.subset(val_idx)

        self.target_labeled: Optional[Domain] = None
        if self.supervision not in ("source", "target_unlabeled") or self.target_labeled_per_class is not None:
            if self.target_labeled_per_class is None:
                self.target_labeled = t_train
            else:
                _, lab = stratified_split(t_train.y, 0.0, seed + 23, per_class=self.target_labeled_per_class)
                self.target_labeled = t_train.subset(lab)
        info["target"] = {"spec": self.target, "split": mode, "train": len(t_train), "test": len(t_test),
                          "val": len(self.target_val),
                          "labeled": 0 if self.target_labeled is None else len(self.target_labeled)}
        if self.target_labeled is not None:
            info["target"]["labeled_index_checksum"] = int(self.target_labeled.y.sum())
        self.split_info = info
        self._prepared = True

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare()
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            for name in ("source_train", "source_val", "source_test"):
                setattr(self, name, [_to(d, device) for d in getattr(self, name)])
            for name in ("target_train", "target_test", "target_val", "target_labeled"):
                setattr(self, name, _to(getattr(self, name), device))

    # ----------------------------------------------------------------- loaders
    def teardown(self, stage: Optional[str] = None) -> None:
        """Record (in ``split_info``) and report once the images that DataLoader workers found undecodable."""
        if not self._prepared or self.options.get("on_bad_image") == "error":  # under error the run stops at one
            return
        from da.data.readers.folders import undecodable_files

        domains = [*self.source_train, *self.source_val, *self.source_test, self.target_train, self.target_test,
                   self.target_val, self.target_labeled]
        files = sorted({f for dom in domains if dom is not None and dom.x is None for f in undecodable_files(dom.dataset)})
        if files and self.split_info.get("undecodable_images", {}).get("count") != len(files):
            self.split_info["undecodable_images"] = {"count": len(files), "files": files[:20]}
            warnings.warn(f"skipped {len(files)} undecodable image(s) (on_bad_image=skip; each was replaced by another "
                          f"image of its class): {', '.join(files[:3])}")

    def _rank(self):
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _labelled_domains(self) -> List[tuple]:
        """(domain, d) pairs of the labelled training stream."""
        out = []
        if self.supervision in ("source", "source+target"):
            out += [(dom, d) for d, dom in enumerate(self.source_train)]
        if self.supervision in ("target", "source+target") and self.target_labeled is not None:
            out.append((self.target_labeled, self.num_sources))
        return out

    def _loader(self, parts: Sequence[tuple], batch_size: int, train: bool, seed_offset: int):
        """A loader over the concatenation of ``(domain, d)`` parts yielding ``(x, y, d)``."""
        rank, world = self._rank()
        if all(dom.in_memory for dom, _ in parts):
            x = torch.cat([dom.x for dom, _ in parts])
            y = torch.cat([dom.y for dom, _ in parts])
            d = torch.cat([torch.full((len(dom),), di, dtype=torch.long, device=dom.y.device) for dom, di in parts])
            bs = batch_size
            if train and len(y) < batch_size * world:
                bs = max(1, len(y) // world)
                warnings.warn(f"only {len(y)} labelled samples: batch size lowered from {batch_size} to {bs}")
            return TensorBatches((x, y, d), bs, shuffle=train, drop_last=train, seed=self.seed + seed_offset,
                                 rank=rank, world_size=world)
        datasets = [Tagged(_with_transform(dom, "train" if train else "eval"), di, y=dom.y) for dom, di in parts]
        collate = next((dom.meta.get("collate_fn") for dom, _ in parts if dom.meta.get("collate_fn")), None)
        g = torch.Generator().manual_seed(self.seed + seed_offset)
        return DataLoader(ConcatDataset(datasets), batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0, generator=g,
                          collate_fn=_tagged_collate(collate) if collate else None)

    def train_dataloader(self):
        labelled = self._labelled_domains()
        if not labelled and not self.source_free:
            raise UserError("no labelled training data: supervision='target' needs target labels "
                            "(--data.target_labeled_per_class k, or supervision source / source+target)")
        n_t = round(self.unlabeled_ratio * self.batch_size)
        loaders = {"source": self._loader(labelled, self.batch_size, True, 101)} if labelled else {}
        loaders["target"] = self._loader([(self.target_train, self.num_sources)], n_t, True, 202)
        step = self.trainer.global_step if self.trainer is not None else 0
        if step and all(isinstance(l, TensorBatches) for l in loaders.values()):
            # a resumed run: put every stream where an uninterrupted run would be (exact resume)
            cycle = max(len(l) for l in loaders.values())
            for loader in loaders.values():
                loader.resume(step, cycle)
        return CombinedLoader(loaders, "max_size_cycle")

    def val_dataloader(self):
        src = [(dom, d) for d, dom in enumerate(self.source_val)]
        tgt = self._loader([(self.target_val, self.num_sources)], self.eval_batch_size, False, 0)
        return [tgt] if self.source_free else [self._loader(src, self.eval_batch_size, False, 0), tgt]

    def test_dataloader(self):
        src = [(dom, d) for d, dom in enumerate(self.source_test)]
        tgt = self._loader([(self.target_test, self.num_sources)], self.eval_batch_size, False, 0)
        return [tgt] if self.source_free else [self._loader(src, self.eval_batch_size, False, 0), tgt]

    def target_train_eval_loader(self):
        """The target's unlabelled training split in dataset order, eval transform (for methods that cluster or
        pseudo-label the whole target, e.g. SHOT's centroids). Under DDP each rank gets its contiguous share."""
        return self._loader([(self.target_train, self.num_sources)], self.eval_batch_size, False, 0)

    def predict_dataloader(self):
        return self._loader([(self.target_test, self.num_sources)], self.eval_batch_size, False, 0)


# --------------------------------------------------------------------------- helpers

def _classes_of(parts: Dict[str, Domain]) -> List[str]:
    return list(next(iter(parts.values())).classes)


def _concat(parts: List[Domain]) -> Domain:
    first = parts[0]
    y = torch.cat([p.y for p in parts])
    if all(p.x is not None for p in parts):
        return replace(first, x=torch.cat([p.x for p in parts]), y=y)
    return replace(first, dataset=ConcatDataset([p.dataset for p in parts]), y=y, x=None)


def _to(dom: Optional[Domain], device: torch.device) -> Optional[Domain]:
    if dom is None or dom.x is None or dom.x.device == device:
        return dom
    return replace(dom, x=dom.x.to(device), y=dom.y.to(device))


def _with_transform(dom: Domain, kind: str) -> Dataset:
    return with_transform_ds(dom.dataset, kind)


def _tagged_collate(collate):
    """Adapt a domain's ``(x, y)`` collate function to ``(x, y, d)`` samples."""

    def fn(samples):
        xs, ys = collate([(x, y) for x, y, _ in samples])
        return xs, ys, torch.tensor([d for _, _, d in samples], dtype=torch.long)

    return fn


def dataset_modality(spec: str) -> str:
    return get_dataset(parse_domain(spec)[0]).modality
