"""Tokenization: dynamic padding, flat storage, and the on-disk token cache (hit, miss, invalidation)."""

import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from da.data.tokenize import (PadCollate, TokenizedDataset, cache_root, cached_tokenize, data_checksum,  # noqa: E402
                              load_tokenizer, token_cache_key, tokenize_texts, tokenizer_fingerprint)
from da.models.text import write_tiny_bert  # noqa: E402

WORDS = "the book was great bad awful good movie".split()
# ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then the words in order: the=5 book=6 was=7 great=8 bad=9 ...


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tinybert"), WORDS, hidden=16, layers=1)


def test_pad_collate_pads_to_the_batch_longest_with_pad_id():
    items = [({"input_ids": torch.tensor([2, 5, 3]), "attention_mask": torch.tensor([1, 1, 1])}, 1),
             ({"input_ids": torch.tensor([2, 3]), "attention_mask": torch.tensor([1, 1])}, torch.tensor(0))]
    batch, y = PadCollate(pad_token_id=7)(items)
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert y.tolist() == [1, 0] and y.dtype == torch.long
    # a batch of short sequences stays short: no padding to a global max_length
    short, _ = PadCollate(0)([items[1], items[1]])
    assert short["input_ids"].shape == (2, 2)


def test_tokenized_dataset_flat_storage_round_trips():
    ds = TokenizedDataset.from_sequences([[2, 5, 3], [2, 3], [2, 6, 7, 3]], [1, 0, 1])
    assert ds.offsets.tolist() == [0, 3, 5, 9]
    assert ds.lengths().tolist() == [3, 2, 4]
    x, y = ds[2]
    assert x["input_ids"].tolist() == [2, 6, 7, 3] and x["attention_mask"].tolist() == [1, 1, 1, 1] and int(y) == 1
    with pytest.raises(ValueError, match="n \\+ 1"):
        TokenizedDataset(torch.zeros(3, dtype=torch.long), torch.tensor([0, 3]), torch.tensor([0, 1]))


def test_tokenize_texts_adds_specials_and_truncates(tiny):
    tok = load_tokenizer(tiny)
    assert tokenize_texts(["The book was GREAT"], tok, max_length=16) == [[2, 5, 6, 7, 8, 3]]
    assert tokenize_texts(["the book was great", "zebra"], tok, max_length=4) == [[2, 5, 6, 3], [2, 1, 3]]
    with pytest.raises(ValueError, match="max_length"):
        tokenize_texts(["x"], tok, max_length=1)


def test_data_checksum_depends_on_texts_labels_and_order():
    base = data_checksum(["a", "b"], [0, 1])
    assert base == data_checksum(["a", "b"], [0, 1])
    assert len({base, data_checksum(["b", "a"], [1, 0]), data_checksum(["a", "b"], [1, 1]),
                data_checksum(["a", "bb"], [0, 1]), data_checksum(["ab"], [0])}) == 5


def test_cache_hit_miss_and_invalidation(tiny, tmp_path):
    texts, labels = ["the book was great", "bad movie", "good good good good good"], [1, 0, 1]
    ds1, coll, info1 = cached_tokenize(texts, labels, tiny, max_length=8, dataset="t", domain="a", cache_dir=tmp_path)
    assert info1["cache_hit"] is False and Path(info1["cache_path"]).is_file()
    assert Path(info1["cache_path"]).parent == tmp_path / "tokens"
    assert ds1[0][0]["input_ids"].tolist() == [2, 5, 6, 7, 8, 3]
    assert coll.pad_token_id == 0

    ds2, _, info2 = cached_tokenize(texts, labels, tiny, max_length=8, dataset="t", domain="a", cache_dir=tmp_path)
    assert info2["cache_hit"] is True and info2["cache_path"] == info1["cache_path"]
    assert torch.equal(ds2.ids, ds1.ids) and torch.equal(ds2.offsets, ds1.offsets)

    # max_length changes -> a different key, re-tokenized (and truncated: 5 x good + 2 specials > 4)
    ds3, _, info3 = cached_tokenize(texts, labels, tiny, max_length=4, dataset="t", domain="a", cache_dir=tmp_path)
    assert info3["cache_hit"] is False and info3["cache_path"] != info1["cache_path"]
    assert ds3.lengths().tolist() == [4, 4, 4] and info3["at_max_length"] == 3
    # the data changes -> a miss too; the old files are kept
    _, _, info4 = cached_tokenize(texts[:2], labels[:2], tiny, max_length=8, dataset="t", domain="a",
                                  cache_dir=tmp_path)
    assert info4["cache_hit"] is False
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 3


def test_cache_recovers_from_a_corrupt_file(tiny, tmp_path):
    _, _, info = cached_tokenize(["the book"], [1], tiny, max_length=8, cache_dir=tmp_path)
    Path(info["cache_path"]).write_bytes(b"not a torch file")
    ds, _, info2 = cached_tokenize(["the book"], [1], tiny, max_length=8, cache_dir=tmp_path)
    assert info2["cache_hit"] is False and ds[0][0]["input_ids"].tolist() == [2, 5, 6, 3]


def test_cache_root_follows_DA_CACHE_DIR(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    _, _, info = cached_tokenize(["bad"], [0], tiny, max_length=8)
    assert Path(info["cache_path"]).parent == tmp_path / "c" / "tokens"
    monkeypatch.delenv("DA_CACHE_DIR")
    assert cache_root() == Path(os.path.expanduser("~/.cache/da"))


def test_key_and_fingerprint_change_with_their_inputs(tiny, tmp_path):
    other = write_tiny_bert(tmp_path / "other", WORDS + ["extra"], hidden=16, layers=1)
    fp1, fp2 = tokenizer_fingerprint(load_tokenizer(tiny)), tokenizer_fingerprint(load_tokenizer(other))
    assert fp1 != fp2 and fp1 == tokenizer_fingerprint(load_tokenizer(tiny))
    keys = {token_cache_key("amazon", "books", fp1, 256, "c"), token_cache_key("amazon", "dvd", fp1, 256, "c"),
            token_cache_key("amazon", "books", fp2, 256, "c"), token_cache_key("amazon", "books", fp1, 128, "c"),
            token_cache_key("amazon", "books", fp1, 256, "d")}
    assert len(keys) == 5


def test_missing_text_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'da\[text\]'"):
        load_tokenizer("bert-base-uncased")


def test_unfetchable_hub_tokenizer_says_pass_a_local_folder(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="local folder"):
        load_tokenizer("no-such-org/no-such-tokenizer")
