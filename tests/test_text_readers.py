"""Text readers: Blitzer pseudo-XML (raw ``&`` and ``<``, entities), CSV / TSV / JSONL files, label encoding, the
token and frozen-feature options; the real Amazon reviews under ``-m data`` when ../shared/data is present."""

import json
import os
from pathlib import Path

import pytest
import torch

from da.data.domain import get_dataset, load_domain
from da.data.readers.text import (SENTIMENT_CLASSES, TextDataset, encode_labels, parse_reviews, read_blitzer_file,
                                  read_text_table)

SHARED = Path(os.environ.get("DA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
AMAZON = SHARED / "data" / "text" / "amazon_reviews" / "sorted_data_acl"


def _review(title, text, rating="5.0"):
    return (f"<review>\n<unique_id>\nB00:x:y\n</unique_id>\n<asin>\nB00\n</asin>\n<product_name>\nA & B <pot>\n"
            f"</product_name>\n<helpful>\n\n</helpful>\n<rating>\n{rating}\n</rating>\n<title>\n{title}\n</title>\n"
            f"<date>\nMay 1, 2006\n</date>\n<review_text>\n{text}\n</review_text>\n</review>\n")


POS = [_review("Great & cheap", "Costs < $20 & works.\n\nI love it &quot;really&quot;"),
       _review("Fine", "Nothing   to add", rating="4.0")]
NEG = [_review("Broke", "It broke after 2 days <sigh> &amp; the lid &#45; cracked", rating="1.0")]


@pytest.fixture
def blitzer_root(tmp_path):
    folder = tmp_path / "text" / "amazon_reviews" / "sorted_data_acl" / "kitchen_&_housewares"
    folder.mkdir(parents=True)
    (folder / "positive.review").write_text("".join(POS), encoding="utf-8")
    (folder / "negative.review").write_text("".join(NEG), encoding="utf-8")
    return tmp_path


def test_parse_reviews_keeps_raw_ampersand_and_less_than_and_unescapes_entities():
    reviews = parse_reviews("".join(POS), fields=("title", "review_text", "rating", "product_name"))
    assert reviews[0] == {"title": "Great & cheap", "review_text": 'Costs < $20 & works. I love it "really"',
                          "rating": "5.0", "product_name": "A & B <pot>"}
    assert reviews[1]["review_text"] == "Nothing to add" and reviews[1]["rating"] == "4.0"
    assert parse_reviews(NEG[0])[0]["review_text"] == "It broke after 2 days <sigh> & the lid - cracked"
    assert parse_reviews("<review>\n<title>\nonly a title\n</title>\n</review>") == [
        {"title": "only a title", "review_text": "", "rating": ""}]


def test_read_blitzer_file_joins_title_and_text(tmp_path):
    f = tmp_path / "positive.review"
    f.write_text("".join(POS), encoding="utf-8")
    assert read_blitzer_file(f) == ['Great & cheap Costs < $20 & works. I love it "really"', "Fine Nothing to add"]
    bad = tmp_path / "bad.review"
    bad.write_text("just text, no blocks")
    with pytest.raises(ValueError, match="no <review>"):
        read_blitzer_file(bad)


def test_amazon_loader_on_a_fixture(blitzer_root):
    out = load_domain("amazon/kitchen", root=str(blitzer_root), some_unknown_option=3)
    assert set(out) == {"all"}
    dom = out["all"]
    assert dom.name == "amazon/kitchen" and dom.modality == "text" and dom.classes == SENTIMENT_CLASSES
    assert dom.y.tolist() == [0, 1, 1]  # negatives first, then positives
    assert dom.dataset[0] == ("Broke It broke after 2 days <sigh> & the lid - cracked", 0)
    assert dom.dataset[1][0].startswith("Great & cheap Costs < $20")
    assert get_dataset("amazon").domains == ("books", "dvd", "electronics", "kitchen")


def test_amazon_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data.root"):
        load_domain("amazon/books", root=str(tmp_path))
    with pytest.raises(ValueError, match="did you mean 'kitchen'"):
        load_domain("amazon/kitchn", root=str(tmp_path))


def test_encode_labels():
    assert encode_labels(["pos", "neg", "pos", "neutral"]) == ([2, 0, 2, 1], ["neg", "neutral", "pos"])
    assert encode_labels(["1", 0, "2"]) == ([1, 0, 2], ["0", "1", "2"])
    assert encode_labels(["pos", "neg"], classes=["pos", "neg"]) == ([0, 1], ["pos", "neg"])
    with pytest.raises(ValueError, match="not in classes"):
        encode_labels(["pos", "meh"], classes=["pos", "neg"])
    with pytest.raises(ValueError, match=">= 0"):
        encode_labels([-1, 1])


def test_textfile_csv_with_string_labels_and_quoted_commas(tmp_path):
    (tmp_path / "shop.csv").write_text('text,label\n"Cheap, & good",pos\nBad <3,neg\nOk,pos\n', encoding="utf-8")
    dom = load_domain("textfile/shop", root=str(tmp_path))["all"]
    assert dom.classes == ["neg", "pos"] and dom.y.tolist() == [1, 0, 1]
    assert [dom.dataset[i][0] for i in range(3)] == ["Cheap, & good", "Bad <3", "Ok"]
    assert dom.meta["file"].endswith("shop.csv")


def test_textfile_jsonl_with_domain_filter_and_tsv(tmp_path):
    rows = [{"text": "a", "label": 1, "domain": "books"}, {"text": "b", "label": 0, "domain": "dvd"},
            {"text": "c", "label": 0, "domain": "books"}]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    dom = load_domain("textfile/mixed", root=str(tmp_path), domain_value="books")["all"]
    assert [dom.dataset[i] for i in range(len(dom))] == [("a", 1), ("c", 0)] and dom.classes == ["0", "1"]
    assert len(load_domain("textfile/mixed", root=str(tmp_path))["all"]) == 3
    (tmp_path / "t.tsv").write_text("sentence\tstars\nnice one\t5\n", encoding="utf-8")
    texts, raw = read_text_table(tmp_path / "t.tsv", text_column="sentence", label_column="stars")
    assert texts == ["nice one"] and raw == ["5"]


def test_textfile_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_domain("textfile/nothere", root=str(tmp_path))
    (tmp_path / "cols.csv").write_text("body,y\nx,1\n")
    with pytest.raises(ValueError, match="text_column"):
        load_domain("textfile/cols", root=str(tmp_path))
    with pytest.raises(ValueError, match="no column 'domain'"):
        load_domain("textfile/cols", root=str(tmp_path), text_column="body", label_column="y", domain_value="b")
    (tmp_path / "two.csv").write_text("text,label\nx,1\n")
    (tmp_path / "two.jsonl").write_text('{"text": "x", "label": 1}\n')
    with pytest.raises(ValueError, match="several files"):
        load_domain("textfile/two", root=str(tmp_path))
    (tmp_path / "broken.jsonl").write_text('{"text": "x", "label": 1}\n{oops\n')
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        load_domain("textfile/broken", root=str(tmp_path))


def test_text_dataset_checks_lengths():
    assert TextDataset(["a", "b"], [0, 1])[1] == ("b", 1)
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        TextDataset(["a", "b"], [0])


def test_tokenizer_and_encoder_options_give_token_and_feature_domains(blitzer_root, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from da.data.tokenize import PadCollate, TokenizedDataset
    from da.models.text import HFEncoder, write_tiny_bert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_tiny_bert(tmp_path / "tiny", "it broke after days the lid great cheap fine".split(), hidden=16,
                             layers=1)
    dom = load_domain("amazon/kitchen", root=str(blitzer_root), tokenizer=folder, max_length=8)["all"]
    assert dom.modality == "text" and isinstance(dom.dataset, TokenizedDataset)
    # the two long reviews are cut at 8; "fine nothing to add" -> [CLS] fine [UNK] [UNK] [UNK] [SEP]
    assert dom.dataset.lengths().tolist() == [8, 8, 6]
    assert dom.dataset[2][0]["input_ids"].tolist() == [2, 13, 1, 1, 1, 3]  # fine = 5 + 8
    collate = dom.meta["collate_fn"]
    assert isinstance(collate, PadCollate) and dom.meta["tokenization"]["cache_hit"] is False
    batch, y = collate([dom.dataset[2], dom.dataset[0]])
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].sum(1).tolist() == [6, 8]
    assert batch["input_ids"][0, 6:].tolist() == [0, 0] and y.tolist() == [1, 0]
    again = load_domain("amazon/kitchen", root=str(blitzer_root), tokenizer=folder, max_length=8)["all"]
    assert again.meta["tokenization"]["cache_hit"] is True

    feats = load_domain("amazon/kitchen", root=str(blitzer_root), encoder=folder, max_length=16,
                        progress=False)["all"]
    assert feats.modality == "features" and feats.x.shape == (3, 16) and feats.x.dtype == torch.float32
    assert feats.y.tolist() == [0, 1, 1] and feats.meta["embedding"]["cache_hit"] is False
    enc = HFEncoder(folder, freeze=True)
    tok_dom = load_domain("amazon/kitchen", root=str(blitzer_root), tokenizer=folder, max_length=16)["all"]
    with torch.no_grad():
        ref = torch.cat([enc(tok_dom.meta["collate_fn"]([tok_dom.dataset[i]])[0]) for i in range(3)])
    torch.testing.assert_close(feats.x, ref, atol=1e-5, rtol=1e-5)
    assert load_domain("amazon/kitchen", root=str(blitzer_root), encoder=folder, max_length=16,
                       progress=False)["all"].meta["embedding"]["cache_hit"] is True


@pytest.mark.data
@pytest.mark.parametrize("domain", ["books", "dvd", "electronics", "kitchen"])
def test_blitzer_reader_on_the_shared_reviews(domain):
    if not AMAZON.is_dir():
        pytest.skip(f"Amazon reviews not found at {AMAZON}")
    dom = load_domain(f"amazon/{domain}", root=str(SHARED / "data"))["all"]
    assert len(dom) == 2000 and dom.class_counts().tolist() == [1000, 1000]
    texts = [dom.dataset[i][0] for i in range(len(dom))]
    assert all(texts)
    # every entity is unescaped once: a "&quot;" survives only where the file double-escaped it as "&amp;quot;"
    folder = AMAZON / ("kitchen_&_housewares" if domain == "kitchen" else domain)
    raw = "".join((folder / f).read_text(encoding="utf-8") for f in ("negative.review", "positive.review"))
    assert sum(t.count("&quot;") for t in texts) == raw.count("&amp;quot;")
    assert sum(t.count('"') for t in texts) >= raw.count("&quot;") - raw.count("&amp;quot;")
    words = sum(len(t.split()) for t in texts) / len(texts)
    # the data README gives the mean words per review text (books 173, dvd 167, electronics 110, kitchen 92);
    # ours includes the title (a few words)
    expected = {"books": 173, "dvd": 167, "electronics": 110, "kitchen": 92}[domain]
    assert expected <= words <= expected + 8
