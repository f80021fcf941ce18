"""HFEncoder (pooling, freezing by block, no-decay names, offline and missing-extra errors) and the frozen-embedding
cache, on a tiny random BERT written by the test; the real MiniLM only under ``-m data``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from da.data.embed import cached_embeddings, embed_texts, embedding_cache_key, model_fingerprint  # noqa: E402
from da.data.tokenize import PadCollate, load_tokenizer, tokenize_texts  # noqa: E402
from da.models.text import HFEncoder, masked_mean, write_tiny_bert  # noqa: E402

WORDS = "the book was great bad awful good movie not a at all".split()
TEXTS = ["the book was great", "bad", "not good at all , awful movie", "a good book", "awful"]
SHARED = Path(os.environ.get("DA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tinybert"), WORDS, hidden=32, layers=2, seed=0)


def _batch(folder, texts):
    tok = load_tokenizer(folder)
    ids = tokenize_texts(texts, tok, max_length=32)
    items = [({"input_ids": torch.tensor(s), "attention_mask": torch.ones(len(s), dtype=torch.long)}, 0) for s in ids]
    return PadCollate(0)(items)[0], ids


def test_masked_mean_by_hand():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert masked_mean(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    assert masked_mean(torch.ones(1, 2, 3), torch.zeros(1, 2)).tolist() == [[0.0, 0.0, 0.0]]  # no division by 0


def test_mean_pooling_is_padding_invariant_and_matches_a_per_sample_reference(tiny):
    enc = HFEncoder(tiny, pooling="mean").eval()
    batch, ids = _batch(tiny, TEXTS)
    with torch.no_grad():
        pooled = enc(batch)
        ref = torch.stack([enc.model(input_ids=torch.tensor([s])).last_hidden_state[0].mean(0) for s in ids])
    assert pooled.shape == (len(TEXTS), 32) and pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, ref, atol=1e-5, rtol=1e-5)


def test_cls_pooling_is_the_first_hidden_state(tiny):
    enc = HFEncoder(tiny, pooling="cls").eval()
    batch, _ = _batch(tiny, TEXTS)
    with torch.no_grad():
        h = enc.model(**batch).last_hidden_state
        torch.testing.assert_close(enc(batch), h[:, 0])
        # a bare tensor of ids is accepted as an unpadded batch
        torch.testing.assert_close(enc(batch["input_ids"][:1, :6]), h[:1, 0])
    with pytest.raises(ValueError, match="pooling"):
        HFEncoder(tiny, pooling="max")


def test_blocks_freezing_and_no_decay_names(tiny):
    enc = HFEncoder(tiny)
    blocks = enc.blocks()
    assert len(blocks) == 3 and blocks[0] is enc.model.embeddings and blocks[2] is enc.model.encoder.layer[1]
    assert enc.out_features == 32 and enc.model.pooler is None
    assert enc.model.training  # from_pretrained returns eval mode; a trainable backbone must start with dropout on
    # embeddings LayerNorm (2) + per layer 6 biases and 2 LayerNorms x 2 parameters = 10, two layers
    names = enc.no_decay_names()
    assert len(names) == 2 + 2 * 10
    assert all(n.endswith("bias") or "LayerNorm" in n for n in names)
    assert names <= {n for n, _ in enc.named_parameters()}

    part = HFEncoder(tiny, freeze_layers=2)
    trainable = {n for n, p in part.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.layer.1.") for n in trainable)
    assert sum(p.numel() for p in part.model.encoder.layer[1].parameters()) == sum(
        p.numel() for n, p in part.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="only 3 blocks"):
        HFEncoder(tiny, freeze_layers=4)


def test_frozen_encoder_has_no_gradients_and_stays_in_eval_mode(tiny):
    enc = HFEncoder(tiny, freeze=True)
    enc.train()
    assert not enc.model.training and all(not p.requires_grad for p in enc.parameters())
    batch, _ = _batch(tiny, TEXTS)
    a, b = enc(batch), enc(batch)  # dropout is off: identical
    assert torch.equal(a, b) and not a.requires_grad


def test_gradients_reach_trainable_layers_and_checkpointing_changes_nothing(tiny):
    batch, _ = _batch(tiny, TEXTS)
    torch.manual_seed(0)
    w = torch.randn(32)
    grads, calls = [], []
    for ckpt in (False, True):
        enc = HFEncoder(tiny, freeze_layers=1, gradient_checkpointing=ckpt).train()
        for m in enc.modules():  # dropout off, so both runs compute the same function in train mode
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        n = []
        enc.model.encoder.layer[1].intermediate.register_forward_hook(lambda *_: n.append(1))
        (enc(batch) @ w).sum().backward()
        assert enc.model.embeddings.word_embeddings.weight.grad is None
        g = enc.model.encoder.layer[0].attention.self.query.weight.grad
        assert g is not None and g.abs().sum() > 0
        grads.append(g)
        calls.append(len(n))
    assert calls == [1, 2]  # with checkpointing the layer is recomputed in the backward pass
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_half_precision_weights_give_float32_features(tiny):
    enc = HFEncoder(tiny, dtype="float16")
    assert enc.model.embeddings.word_embeddings.weight.dtype == torch.float16
    batch, _ = _batch(tiny, TEXTS[:2])
    with torch.no_grad():
        assert enc.eval()(batch).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        HFEncoder(tiny, dtype="float8")


def test_unfetchable_hub_name_says_pass_a_local_folder(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="Pass a local folder") as err:
        HFEncoder("no-such-org/no-such-encoder")
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "no-such-org/no-such-encoder" in str(err.value)
    with pytest.raises(OSError, match="local folder"):
        HFEncoder(str(tmp_path / "missing" / "model"))


def test_missing_extra_import_is_fine_but_construction_names_the_extra():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import da.models.text as t\n"
            "try:\n    t.HFEncoder('x')\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "pip install 'da[text]'" in out.stdout


def test_embed_texts_restores_input_order_and_matches_the_encoder(tiny):
    enc = HFEncoder(tiny, freeze=True)
    tok = load_tokenizer(tiny)
    x = embed_texts(TEXTS, enc, tok, max_length=32, batch_size=2, device="cpu", progress=False)
    batch, _ = _batch(tiny, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(x, enc(batch), atol=1e-5, rtol=1e-5)
    # a normal tensor, usable in autograd (not an inference-mode tensor)
    w = torch.ones(32, requires_grad=True)
    (x @ w).sum().backward()
    assert w.grad is not None


def test_embedding_cache_hit_miss_and_keys(tiny, tmp_path):
    labels = [1, 0, 0, 1, 0]
    x1, info1 = cached_embeddings(TEXTS, labels, tiny, max_length=32, cache_dir=tmp_path, progress=False)
    assert info1["cache_hit"] is False and x1.shape == (5, 32)
    x2, info2 = cached_embeddings(TEXTS, labels, tiny, max_length=32, cache_dir=tmp_path, progress=False)
    assert info2["cache_hit"] is True and torch.equal(x1, x2)
    x3, info3 = cached_embeddings(TEXTS, labels, tiny, max_length=3, cache_dir=tmp_path, progress=False)
    assert info3["cache_hit"] is False and not torch.allclose(x1, x3)
    x4, info4 = cached_embeddings(TEXTS, labels, tiny, max_length=32, pooling="cls", cache_dir=tmp_path,
                                  progress=False)
    assert info4["cache_hit"] is False and not torch.allclose(x1, x4)
    assert len(list((tmp_path / "embeddings").glob("*.pt"))) == 3
    fp = model_fingerprint(tiny)
    assert len({embedding_cache_key(fp, "c", 32, "mean", False), embedding_cache_key(fp, "c", 32, "mean", True),
                embedding_cache_key(fp, "d", 32, "mean", False), embedding_cache_key("other", "c", 32, "mean", False)}) == 4


def test_model_fingerprint_changes_when_the_weights_change(tmp_path):
    a = write_tiny_bert(tmp_path / "a", WORDS, hidden=16, layers=1, seed=0)
    b = write_tiny_bert(tmp_path / "b", WORDS, hidden=16, layers=1, seed=1)
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(str(a))
    assert model_fingerprint("org/name", '{"a": 1}') != model_fingerprint("org/name", '{"a": 2}')
    with pytest.raises(FileNotFoundError, match="no weight file"):
        model_fingerprint(tmp_path)


@pytest.mark.data
def test_real_minilm_mean_pooling_ranks_paraphrases_first():
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"pretrained MiniLM not found at {MINILM}")
    enc = HFEncoder(str(MINILM), pooling="mean", freeze=True, normalize=True)
    assert enc.out_features == 384 and len(enc.blocks()) == 7
    # 22.7 M parameters with BERT's pooler, which HFEncoder drops (384 x 384 + 384 = 147,840)
    assert sum(p.numel() for p in enc.parameters()) + 147_840 == pytest.approx(22.7e6, rel=0.01)
    tok = load_tokenizer(str(MINILM))
    x = embed_texts(["This blender is terrible, it broke after a week.",
                     "The mixer stopped working after seven days; awful.",
                     "A wonderful novel about growing up in Ireland."], enc, tok, progress=False, device="cpu")
    assert torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2
