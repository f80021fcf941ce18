"""Tokenize a text domain once, cache the token ids on disk, pad each batch to its own longest sequence.

A tokenized domain is a :class:`TokenizedDataset` whose item ``i`` is
``({"input_ids": LongTensor(L_i), "attention_mask": LongTensor(L_i)}, y_i)`` with per-sample lengths
``L_i <= max_length``, and a :class:`PadCollate` that turns a list of such items into
``({"input_ids": (n, L_max), "attention_mask": (n, L_max)}, labels)`` with ``L_max = max_i L_i`` of *that batch*
(dynamic padding: a batch of short reviews costs a short forward pass).

Cache: ``<cache root>/tokens/<key>.pt`` with ``<cache root>`` = ``$DA_CACHE_DIR`` or ``~/.cache/da`` and
``key = sha256(dataset, domain, tokenizer fingerprint, max_length, data checksum)``; the tokenizer fingerprint
hashes the tokenizer's full serialisation (vocabulary, normaliser, special tokens), the data checksum hashes the
texts and labels. Changing any of them (e.g. ``max_length``) is a miss; the old file is left alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

CACHE_ENV_VAR = "DA_CACHE_DIR"
TEXT_EXTRA_HINT = "pip install 'da[text]'"


def cache_root() -> Path:
    """``$DA_CACHE_DIR`` if set, else ``~/.cache/da`` (token and embedding caches live below it)."""
    return Path(os.path.expanduser(os.environ.get(CACHE_ENV_VAR) or "~/.cache/da"))


def data_checksum(texts: Sequence[str], labels: Sequence[int]) -> str:
    """sha256 over the texts and labels, in order (what the data *is*, not where its files are)."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels):
        h.update(str(int(label)).encode())
        h.update(b"\x1f")
        h.update(text.encode("utf-8"))
        h.update(b"\x1e")
    h.update(str(len(texts)).encode())
    return h.hexdigest()


def is_local_path(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` means a folder on disk (exists, or is written like a path) rather than a Hub name."""
    s = str(name_or_path)
    return (os.path.exists(os.path.expanduser(s)) or s.startswith(("/", "./", "../", "~", "."))
            or s.count("/") > 1 or "\\" in s)


def hub_error(name_or_path: str, what: str, err: BaseException) -> OSError:
    """The error for a model/tokenizer that could not be loaded: says to pass a local folder."""
    s = str(name_or_path)
    if is_local_path(s):
        return OSError(f"could not load the {what} from the local folder '{s}' ({type(err).__name__}: {err}). "
                       f"Check that the folder exists and holds the files `save_pretrained` writes "
                       f"(config.json and model weights, or tokenizer.json / vocab.txt).")
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    why = "HF_HUB_OFFLINE=1 is set" if offline else "the Hugging Face Hub could not be reached or has no such repo"
    return OSError(f"could not fetch the {what} '{s}' from the Hugging Face Hub ({why}; {type(err).__name__}). "
                   f"Pass a local folder instead, e.g. ../shared/models/all-MiniLM-L6-v2, or download it on a machine "
                   f"with internet (`huggingface-cli download {s} --local-dir <folder>`) and pass that folder.")


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """A Hugging Face (fast) tokenizer from a Hub name or a local folder (``AutoTokenizer.from_pretrained``)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as err:
        raise ImportError(f"tokenizing text needs the optional extra: {TEXT_EXTRA_HINT} "
                          f"(transformers and tokenizers)") from err
    path = os.path.expanduser(str(name_or_path))
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise hub_error(str(name_or_path), "tokenizer", err) from err


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full serialisation (vocab, normaliser, pre-tokeniser, special tokens)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizer: its vocabulary and special tokens
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr(getattr(tokenizer, "special_tokens_map", {})).encode())
    h.update(repr(getattr(tokenizer, "padding_side", "right")).encode())
    return h.hexdigest()


class TokenizedDataset(Dataset):
    """Token ids of one domain, stored flat (``ids`` concatenated, ``offsets`` of length n + 1).

    Item ``i``: ``({"input_ids": ids[offsets[i]:offsets[i+1]], "attention_mask": ones}, labels[i])``.
    """

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor):
        if offsets.ndim != 1 or len(offsets) != len(labels) + 1:
            raise ValueError(f"offsets must have n + 1 = {len(labels) + 1} entries, got {tuple(offsets.shape)}")
        self.ids = ids.long()
        self.offsets = offsets.long()
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], labels: Sequence[int]) -> "TokenizedDataset":
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        offsets = torch.zeros(len(sequences) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        flat = [t for s in sequences for t in s]
        return cls(torch.tensor(flat, dtype=torch.long), offsets, torch.as_tensor(labels, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> torch.Tensor:
        """Number of tokens of every sample, ``(n,)``."""
        return self.offsets[1:] - self.offsets[:-1]

    def __getitem__(self, i: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        ids = self.ids[self.offsets[i]:self.offsets[i + 1]]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, self.labels[i]


class PadCollate:
    """Collate ``(dict_of_1d_tensors, label)`` items by right-padding every key to the batch's longest sequence.

    ``input_ids`` is padded with ``pad_token_id``, every other key (``attention_mask``, ``token_type_ids``) with 0.
    Returns ``(dict of (n, L_max) LongTensors, labels (n,))``. A plain class, so it pickles into worker processes.
    """

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[Tuple[Dict[str, torch.Tensor], Any]]) -> Tuple[Dict[str, torch.Tensor],
                                                                                        torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        longest = max(int(x["input_ids"].shape[0]) for x, _ in items)
        out: Dict[str, torch.Tensor] = {}
        for key in items[0][0]:
            fill = self.pad_token_id if key == "input_ids" else 0
            batch = torch.full((len(items), longest), fill, dtype=torch.long)
            for row, (x, _) in enumerate(items):
                seq = x[key]
                batch[row, :seq.shape[0]] = seq
            out[key] = batch
        labels = torch.as_tensor([int(y) for _, y in items], dtype=torch.long)
        return out, labels

    def __repr__(self) -> str:
        return f"PadCollate(pad_token_id={self.pad_token_id})"


def tokenize_texts(texts: Sequence[str], tokenizer: Any, max_length: int = 256,
                   chunk_size: int = 1000) -> List[List[int]]:
    """Token ids of every text (special tokens added, truncated to ``max_length``, no padding)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
    out: List[List[int]] = []
    for start in range(0, len(texts), chunk_size):
        enc = tokenizer(list(texts[start:start + chunk_size]), truncation=True, max_length=max_length,
                        padding=False, add_special_tokens=True)
        out.extend(list(ids) for ids in enc["input_ids"])
    return out


def token_cache_key(dataset: str, domain: str, tokenizer_fp: str, max_length: int, checksum: str) -> str:
    """The cache key: sha256 of (dataset, domain, tokenizer fingerprint, max_length, data checksum)."""
    parts = ["tokens-v1", dataset, domain, tokenizer_fp, str(int(max_length)), checksum]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def cached_tokenize(texts: Sequence[str], labels: Sequence[int], tokenizer: str | os.PathLike | Any,
                    max_length: int = 256, dataset: str = "", domain: str = "",
                    cache_dir: Optional[str | os.PathLike] = None,
                    ) -> Tuple[TokenizedDataset, PadCollate, Dict[str, Any]]:
    """Tokenize ``texts`` once per (dataset, domain, tokenizer, max_length, data checksum), reusing the disk cache.

    Args:
        tokenizer: a Hub name, a local folder, or an already loaded tokenizer.
        cache_dir: the cache root (default :func:`cache_root`); files go to ``<cache_dir>/tokens/``.

    Returns:
        ``(dataset, collate_fn, info)``; ``info`` has ``cache_hit`` (bool), ``cache_path``, ``max_length``,
        ``tokenizer`` and ``at_max_length`` (how many texts reached ``max_length``, i.e. were probably cut), all worth
        recording in ``meta``.
    """
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    key = token_cache_key(dataset, domain, tokenizer_fingerprint(tok), max_length, data_checksum(texts, labels))
    path = Path(cache_dir) if cache_dir is not None else cache_root()
    path = path / "tokens" / f"{key}.pt"
    hit = False
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            ds = TokenizedDataset(blob["ids"], blob["offsets"], torch.as_tensor(labels, dtype=torch.long))
            hit = True
        except Exception:  # a truncated / foreign file: rebuild it
            hit = False
    if not hit:
        ds = TokenizedDataset.from_sequences(tokenize_texts(texts, tok, max_length), labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"ids": ds.ids, "offsets": ds.offsets}, tmp)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    info = {"cache_hit": hit, "cache_path": str(path), "max_length": int(max_length),
            "tokenizer": str(getattr(tok, "name_or_path", tokenizer)),
            "at_max_length": int((ds.lengths() >= max_length).sum())}
    return ds, PadCollate(pad_id), info
