"""Text datasets: the Blitzer Amazon reviews (``amazon/<domain>``) and generic CSV / JSONL files (``textfile/<stem>``).

A text domain is a list of ``(text, label)``. What the loader returns depends on its options:

* no option: a ``text`` Domain whose lazy dataset yields ``(str, label)`` (for your own tokenisation);
* ``tokenizer`` (Hub name or folder) and ``max_length`` (default 256): a ``text`` Domain of token ids, item
  ``({"input_ids": LongTensor(L_i), "attention_mask": ...}, label)``, with ``meta["collate_fn"]`` padding each batch
  to its own longest sequence; tokenized once and cached (:mod:`da.data.tokenize`);
* ``encoder`` (Hub name or folder), ``pooling`` (``mean`` | ``cls``), ``max_length``: the frozen-feature fast path, a
  ``features`` Domain with ``x`` float32 ``(n, hidden)``, embedded once and cached (:mod:`da.data.embed`).

Blitzer, Dredze & Pereira, "Biographies, Bollywood, boom-boxes and blenders: domain adaptation for sentiment
classification", ACL 2007. Files ``<root>/text/amazon_reviews/sorted_data_acl/<folder>/{positive,negative}.review``:
pseudo-XML ``<review>...</review>`` blocks whose text may hold raw ``&`` and ``<``, so each block is parsed with
regular expressions (not an XML parser) and HTML entities are unescaped. Text = title + review text; label 1 =
positive (4-5 stars), 0 = negative (1-2 stars).
"""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from da.data.domain import Domain, register_dataset
from da.data.roots import missing_data_error, resolve_root

AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")
AMAZON_FOLDERS = {"books": "books", "dvd": "dvd", "electronics": "electronics", "kitchen": "kitchen_&_housewares"}
AMAZON_SUBDIR = Path("text") / "amazon_reviews" / "sorted_data_acl"
SENTIMENT_CLASSES = ["negative", "positive"]
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")

_BLOCK = re.compile(r"<review>(.*?)</review>", re.S)
_FIELD_CACHE: Dict[str, "re.Pattern[str]"] = {}
_SPACE = re.compile(r"\s+")


def _field(block: str, name: str) -> Optional[str]:
    pat = _FIELD_CACHE.get(name)
    if pat is None:
        pat = _FIELD_CACHE[name] = re.compile(rf"<{name}>(.*?)</{name}>", re.S)
    m = pat.search(block)
    return None if m is None else m.group(1)


def clean_text(raw: str) -> str:
    """Unescape HTML entities (``&quot;`` -> ``"``, ``&#45;`` -> ``-``) and collapse runs of whitespace."""
    return _SPACE.sub(" ", html.unescape(raw)).strip()


def parse_reviews(content: str, fields: Sequence[str] = ("title", "review_text", "rating")) -> List[Dict[str, str]]:
    """Parse Blitzer pseudo-XML into one dict per ``<review>`` block (missing fields are ``""``; values cleaned)."""
    out = []
    for block in _BLOCK.findall(content):
        out.append({name: clean_text(_field(block, name) or "") for name in fields})
    return out


def review_text(review: Dict[str, str]) -> str:
    """``title + " " + review_text`` (the title often carries the sentiment: "Don't buy this")."""
    return " ".join(part for part in (review.get("title", ""), review.get("review_text", "")) if part)


def read_blitzer_file(path: str | Path) -> List[str]:
    """The texts (title + review text) of one ``.review`` file, in file order."""
    content = Path(path).read_text(encoding="utf-8", errors="replace")
    reviews = parse_reviews(content)
    if not reviews and content.strip():
        raise ValueError(f"no <review>...</review> block found in '{path}': is it a Blitzer .review file?")
    return [review_text(r) for r in reviews]


def read_amazon(root: Optional[str | Path], domain: str) -> Tuple[List[str], List[int], Path]:
    """``(texts, labels, folder)`` of one Amazon domain: negatives (label 0) then positives (label 1)."""
    if domain not in AMAZON_FOLDERS:
        from da.errors import unknown_name
        raise unknown_name("amazon domain", domain, AMAZON_DOMAINS)
    folder = resolve_root(root) / AMAZON_SUBDIR / AMAZON_FOLDERS[domain]
    files = [folder / "negative.review", folder / "positive.review"]
    if not all(f.is_file() for f in files):
        raise missing_data_error(f"Amazon reviews ({domain})", folder,
                                 "pass --data.root ../shared/data (or set DA_DATA_ROOT), or download the Blitzer "
                                 "archive domain_sentiment_data.tar.gz (https://www.cs.jhu.edu/~mdredze/datasets/"
                                 "sentiment/) and extract it so that <root>/text/amazon_reviews/sorted_data_acl/ "
                                 "holds books, dvd, electronics and kitchen_&_housewares")
    texts: List[str] = []
    labels: List[int] = []
    for label, f in enumerate(files):
        t = read_blitzer_file(f)
        texts += t
        labels += [label] * len(t)
    return texts, labels, folder


def read_text_table(path: str | Path, text_column: str = "text", label_column: str = "label",
                    domain_column: str = "domain", domain_value: Optional[str] = None) -> Tuple[List[str], List[Any]]:
    """``(texts, raw labels)`` from a ``.csv`` / ``.tsv`` (header row) or ``.jsonl`` (one object per line) file.

    With ``domain_value``, only rows whose ``domain_column`` equals it are kept.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{lineno}: not a JSON object ({err.msg})") from err
    else:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    if rows:
        missing = [c for c in (text_column, label_column) if c not in rows[0]]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; its columns are {sorted(rows[0])}. "
                             f"Name them with the options text_column / label_column.")
    if domain_value is not None:
        if rows and domain_column not in rows[0]:
            raise ValueError(f"domain_value='{domain_value}' given but {path} has no column '{domain_column}'; "
                             f"its columns are {sorted(rows[0])}")
        rows = [r for r in rows if str(r[domain_column]) == str(domain_value)]
    return [str(r[text_column]) for r in rows], [r[label_column] for r in rows]


def encode_labels(raw: Sequence[Any], classes: Optional[Sequence[str]] = None) -> Tuple[List[int], List[str]]:
    """Map raw labels to ``0..C-1``.

    Integer labels (``1``, ``"0"``) are kept as they are, with classes ``["0", ..., str(max)]``; string labels are
    mapped to the *sorted* class names (``["neg", "pos"]`` -> 0, 1), or to the order of ``classes`` when given.
    """
    names = [str(v).strip() for v in raw]
    if classes is not None:
        classes = [str(c) for c in classes]
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise ValueError(f"labels {unknown[:10]} are not in classes={classes}")
        index = {c: i for i, c in enumerate(classes)}
        return [index[n] for n in names], classes
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        ints = [int(n) for n in names]
        if min(ints) < 0:
            raise ValueError(f"integer labels must be >= 0, got {min(ints)}; give string labels or the option classes")
        return ints, [str(i) for i in range(max(ints) + 1)]
    sorted_names = sorted(set(names))
    index = {c: i for i, c in enumerate(sorted_names)}
    return [index[n] for n in names], sorted_names


class TextDataset(Dataset):
    """Raw texts: item ``i`` is ``(texts[i], labels[i])``."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int]):
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self.texts = list(texts)
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> Tuple[str, int]:
        return self.texts[i], int(self.labels[i])


def text_domain(name: str, texts: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                tokenizer: Optional[str] = None, max_length: int = 256, encoder: Optional[str] = None,
                pooling: str = "mean", normalize: bool = False, embed_batch_size: int = 64,
                embed_device: Optional[str] = None, progress: bool = True, cache_dir: Optional[str] = None,
                meta: Optional[Dict[str, Any]] = None) -> Domain:
    """Build the Domain of a list of texts: raw strings, token ids (``tokenizer``) or frozen features (``encoder``)."""
    meta = dict(meta or {})
    meta["num_texts"] = len(texts)
    dataset, dom = name.split("/", 1) if "/" in name else (name, name)
    if encoder is not None:
        from da.data.embed import cached_embeddings

        x, info = cached_embeddings(texts, labels, encoder, pooling=pooling, max_length=max_length,
                                    normalize=normalize, tokenizer=tokenizer, batch_size=embed_batch_size,
                                    device=embed_device, progress=progress, cache_dir=cache_dir, desc=name)
        return Domain(name, list(classes), torch.as_tensor(labels), x=x, modality="features",
                      meta={**meta, "embedding": info})
    if tokenizer is not None:
        from da.data.tokenize import cached_tokenize

        ds, collate, info = cached_tokenize(texts, labels, tokenizer, max_length=max_length, dataset=dataset,
                                            domain=dom, cache_dir=cache_dir)
        return Domain(name, list(classes), torch.as_tensor(labels), dataset=ds, modality="text",
                      meta={**meta, "tokenization": info, "collate_fn": collate})
    return Domain(name, list(classes), torch.as_tensor(labels), dataset=TextDataset(texts, labels), modality="text",
                  meta=meta)


@register_dataset("amazon", domains=AMAZON_DOMAINS, modality="text",
                  description="Amazon multi-domain sentiment reviews (Blitzer et al. ACL 2007), 2,000 per domain, "
                              "2 classes",
                  download_hint="--data.root ../shared/data, or the Blitzer archive domain_sentiment_data.tar.gz")
def load_amazon(domain: str, root: Optional[str] = None, tokenizer: Optional[str] = None, max_length: int = 256,
                encoder: Optional[str] = None, pooling: str = "mean", normalize: bool = False,
                embed_batch_size: int = 64, embed_device: Optional[str] = None, progress: bool = True,
                cache_dir: Optional[str] = None, **_: Any) -> Dict[str, Domain]:
    """Blitzer Amazon reviews of one domain (books, dvd, electronics, kitchen) as ``{"all": Domain}``."""
    texts, labels, folder = read_amazon(root, domain)
    dom = text_domain(f"amazon/{domain}", texts, labels, SENTIMENT_CLASSES, tokenizer=tokenizer,
                      max_length=max_length, encoder=encoder, pooling=pooling, normalize=normalize,
                      embed_batch_size=embed_batch_size, embed_device=embed_device, progress=progress,
                      cache_dir=cache_dir, meta={"folder": str(folder)})
    return {"all": dom}


@register_dataset("textfile", domains=(), modality="text",
                  description="a CSV / TSV / JSONL file <root>/<domain>.{csv,tsv,jsonl} with text and label columns")
def load_textfile(domain: str, root: Optional[str] = None, text_column: str = "text", label_column: str = "label",
                  domain_column: str = "domain", domain_value: Optional[str] = None,
                  classes: Optional[Sequence[str]] = None, tokenizer: Optional[str] = None, max_length: int = 256,
                  encoder: Optional[str] = None, pooling: str = "mean", normalize: bool = False,
                  embed_batch_size: int = 64, embed_device: Optional[str] = None, progress: bool = True,
                  cache_dir: Optional[str] = None, **_: Any) -> Dict[str, Domain]:
    """Texts and labels of ``<root>/<domain>.csv`` (or ``.tsv`` / ``.jsonl``) as ``{"all": Domain}``.

    ``domain_value`` keeps only the rows whose ``domain_column`` equals it (several domains in one file:
    ``textfile/reviews`` with ``--data.options '{domain_value: books}'``). String labels map to sorted class names.
    """
    base = resolve_root(root)
    found = [base / f"{domain}{suffix}" for suffix in TABLE_SUFFIXES if (base / f"{domain}{suffix}").is_file()]
    if not found:
        raise missing_data_error(f"text file '{domain}'", base,
                                 f"write {base / domain}.csv (or .tsv / .jsonl) with columns '{text_column}' and "
                                 f"'{label_column}', or point --data.root at its folder")
    if len(found) > 1:
        raise ValueError(f"several files for text domain '{domain}': {[str(f) for f in found]}; keep one")
    texts, raw = read_text_table(found[0], text_column, label_column, domain_column, domain_value)
    if not texts:
        raise ValueError(f"{found[0]} has no rows" + (f" with {domain_column} == '{domain_value}'"
                                                      if domain_value is not None else ""))
    labels, class_names = encode_labels(raw, classes)
    dom = text_domain(f"textfile/{domain}", texts, labels, class_names, tokenizer=tokenizer, max_length=max_length, encoder=encoder,
                      pooling=pooling, normalize=normalize, embed_batch_size=embed_batch_size,
                      embed_device=embed_device, progress=progress, cache_dir=cache_dir,
                      meta={"file": str(found[0]), "domain_value": domain_value})
    return {"all": dom}
