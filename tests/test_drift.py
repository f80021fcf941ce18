"""weight_drift / state_dict_of: hand values, prefixes, groups, and the three file kinds it reads."""

import math

import pytest
import torch

from da.diagnostics import block_of, state_dict_of, weight_drift


def _ref():
    return {"embeddings.word.weight": torch.tensor([[3.0, 4.0]]),          # norm 5
            "encoder.layer.0.dense.weight": torch.tensor([0.0, 0.0, 12.0]),  # norm 12
            "encoder.layer.0.steps": torch.tensor([7]),                      # integer: ignored
            "pooler.weight": torch.ones(2)}                                  # absent from the weights


def test_hand_values_overall_and_per_block():
    ref = _ref()
    w = {"backbone.embeddings.word.weight": torch.tensor([[3.0, 4.0]]),      # unchanged
         "backbone.encoder.layer.0.dense.weight": torch.tensor([0.0, 3.0, 8.0]),  # diff (0, 3, -4): 5
         "backbone.encoder.layer.0.steps": torch.tensor([9]),
         "backbone.classifier.weight": torch.ones(3)}                       # new layer: not in the reference
    d = weight_drift(w, ref, prefix="backbone.")
    assert d["distance"] == pytest.approx(5.0)
    assert d["reference_norm"] == pytest.approx(13.0)                       # sqrt(25 + 144)
    assert d["relative"] == pytest.approx(5.0 / 13.0)
    assert d["max_abs"] == pytest.approx(4.0)
    assert (d["n_tensors"], d["n_params"]) == (2, 5)
    assert d["groups"] == {"embeddings": pytest.approx(0.0), "layer.0": pytest.approx(5.0 / 12.0)}


def test_identical_weights_drift_zero_and_missing_prefix_is_an_error():
    ref = _ref()
    assert weight_drift(ref, ref)["relative"] == 0.0
    with pytest.raises(ValueError, match="prefix 'model.'"):
        weight_drift(ref, ref, prefix="model.")


def test_block_of_names():
    assert block_of("encoder.layer.11.attention.self.query.weight") == "layer.11"
    assert block_of("layer4.1.conv1.weight") == "layer4"
    assert block_of("transformer.h.3.mlp.c_fc.weight") == "h.3"
    assert block_of("embeddings.LayerNorm.weight") == "embeddings"


def test_reads_a_lightning_checkpoint_a_state_dict_and_a_hf_folder(tmp_path):
    ref = {"a.weight": torch.arange(4.0), "b.bias": torch.ones(2)}
    moved = {"model.a.weight": torch.arange(4.0) + 1.0, "model.b.bias": torch.ones(2)}
    torch.save({"state_dict": moved, "epoch": 3}, tmp_path / "last.ckpt")
    torch.save(ref, tmp_path / "ref.pt")
    folder = tmp_path / "hf"
    folder.mkdir()
    from safetensors.torch import save_file
    save_file(ref, str(folder / "model.safetensors"))
    d = weight_drift(state_dict_of(tmp_path / "last.ckpt"), state_dict_of(folder), prefix="model.")
    assert d["relative"] == pytest.approx(2.0 / math.sqrt(14.0 + 2.0))   # ||(1,1,1,1)|| / ||(0,1,2,3,1,1)||
    assert state_dict_of(tmp_path / "ref.pt").keys() == ref.keys()
    with pytest.raises(FileNotFoundError, match="neither"):
        state_dict_of(tmp_path)
