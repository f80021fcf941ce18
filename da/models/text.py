"""Hugging Face transformer encoders as `da` backbones (optional extra ``da[text]``).

:class:`HFEncoder` maps a batch of token ids ``{"input_ids": (n, L), "attention_mask": (n, L), ...}`` to pooled
features ``(n, hidden)``:

* ``pooling="mean"``: ``f_i = sum_t m_it h_it / max(1, sum_t m_it)``, the attention-mask-weighted mean of the last
  hidden states (Reimers & Gurevych, Sentence-BERT, EMNLP 2019; the pooling all-MiniLM-L6-v2 was trained with);
* ``pooling="cls"``: ``f_i = h_i0``, the hidden state of the first ([CLS]) token (Devlin et al., BERT, NAACL 2019).

It follows the backbone contract of :mod:`da.models.backbones` (``out_features``, ``blocks()``), so every loss of
`da` (L2-SP toward the pretrained weights, DANN, MMD, CORAL, multi-source anchors) runs on it unchanged.
Importing this module never needs ``transformers``; constructing an encoder does.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List, Optional, Set, Union

import torch
from torch import nn

from da.data.tokenize import TEXT_EXTRA_HINT, hub_error

POOLINGS = ("mean", "cls")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def require_transformers() -> Any:
    """The ``transformers`` module, or an ImportError that names the extra to install."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"Hugging Face encoders need the optional extra `da[text]` (transformers, tokenizers): "
                          f"{TEXT_EXTRA_HINT}") from err
    return transformers


def parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """``None`` | ``"float16"`` | ``"bf16"`` | ``torch.float16`` ... -> a ``torch.dtype`` (or ``None``)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).replace("torch.", "").lower()
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; use one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t m_t h_t / max(1, sum_t m_t)`` over the sequence axis: ``(n, L, d), (n, L) -> (n, d)``."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def load_pretrained_encoder(name_or_path: str | os.PathLike, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """``AutoModel.from_pretrained(name_or_path)``, with errors that say what to do (install, or pass a folder)."""
    transformers = require_transformers()
    path = os.path.expanduser(str(name_or_path))
    kwargs: Dict[str, Any] = {}
    if dtype is not None:
        params = inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters
        # transformers >= 4.56 calls it `dtype`, older versions `torch_dtype` (passed through **kwargs)
        kwargs["dtype" if "dtype" in params or _transformers_major(transformers) >= 5 else "torch_dtype"] = dtype
    try:
        return transformers.AutoModel.from_pretrained(path, **kwargs)
    except ImportError:
        raise
    except Exception as err:  # OSError, huggingface_hub's offline / not-found errors, bad config ...
        raise hub_error(str(name_or_path), "encoder", err) from err


def _transformers_major(transformers: Any) -> int:
    try:
        return int(str(transformers.__version__).split(".")[0])
    except ValueError:
        return 0


class HFEncoder(nn.Module):
    """A Hugging Face encoder (``AutoModel``) with pooling: ``batch -> (n, hidden)`` features.

    Args:
        name_or_path: a Hub name (``sentence-transformers/all-MiniLM-L6-v2``) or a local folder written by
            ``save_pretrained`` (``../shared/models/all-MiniLM-L6-v2``). Offline, pass a folder.
        pooling: ``"mean"`` (masked mean of the last hidden states) or ``"cls"`` (first token).
        freeze: freeze the whole encoder (no gradients, kept in eval mode so dropout is off): the linear-probe /
            frozen-feature setting.
        freeze_layers: freeze the first ``k`` entries of :meth:`blocks` (block 0 is the embeddings, block ``i``
            the ``i``-th transformer layer), e.g. ``freeze_layers=3`` freezes the embeddings and layers 1-2.
        dtype: load the weights in this dtype (``"float16"``, ``"bfloat16"``); features are returned in float32.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30 % more time).
        normalize: L2-normalise the pooled features (what sentence-transformers does after pooling).

    Attributes:
        out_features: the hidden size. ``model``: the underlying ``transformers`` model.
        pretrained: always ``True``: the weights come from ``name_or_path`` (L2-SP's ``w0``).
    """

    pretrained = True

    def __init__(self, name_or_path: str, pooling: str = "mean", freeze: bool = False, freeze_layers: int = 0,
                 dtype: Union[None, str, torch.dtype] = None, gradient_checkpointing: bool = False,
                 normalize: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}'; use one of {', '.join(POOLINGS)}")
        if freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {freeze_layers}")
        self.name_or_path = str(name_or_path)
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.model = load_pretrained_encoder(name_or_path, parse_dtype(dtype))
        if getattr(self.model, "pooler", None) is not None:
            # BERT's tanh pooler is not used by either pooling: drop it so no parameter goes without a gradient
            self.model.pooler = None
        self.out_features = int(self.model.config.hidden_size)
        self._forward_keys = set(inspect.signature(self.model.forward).parameters)
        if gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.frozen = bool(freeze)
        blocks = self.blocks()
        if freeze_layers > len(blocks):
            raise ValueError(f"freeze_layers={freeze_layers} but {self.name_or_path} has only {len(blocks)} blocks "
                             f"(embeddings + {len(blocks) - 1} layers)")
        for block in blocks[:freeze_layers]:
            block.requires_grad_(False)
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()
        else:  # from_pretrained returns the model in eval mode; a trainable backbone starts in train mode (dropout on)
            self.model.train()

    def train(self, mode: bool = True) -> "HFEncoder":
        """Like ``nn.Module.train``, but a fully frozen encoder stays in eval mode (dropout off)."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def blocks(self) -> List[nn.Module]:
        """``[embeddings, layer_1, ..., layer_L]`` in input-to-output order (BERT, RoBERTa, ELECTRA, DistilBERT...)."""
        m = self.model
        emb = getattr(m, "embeddings", None)
        layers = None
        for owner, attr in (("encoder", "layer"), ("transformer", "layer"), ("encoder", "layers"), (None, "layers")):
            parent = getattr(m, owner, None) if owner else m
            if parent is not None and isinstance(getattr(parent, attr, None), nn.ModuleList):
                layers = getattr(parent, attr)
                break
        if emb is None or layers is None:
            raise TypeError(f"cannot find the embeddings and layer list of {type(m).__name__}; freezing by block "
                            f"supports BERT-like encoders (model.embeddings + model.encoder.layer)")
        return [emb, *layers]

    def no_decay_names(self) -> Set[str]:
        """Names (relative to this module, as in ``named_parameters()``) of biases and LayerNorm weights.

        The usual BERT fine-tuning recipe applies no weight decay to these (Devlin et al. 2019).
        """
        names: Set[str] = set()
        for mod_name, mod in self.named_modules():
            is_norm = isinstance(mod, nn.LayerNorm) or "layernorm" in type(mod).__name__.lower()
            for p_name, _ in mod.named_parameters(recurse=False):
                if is_norm or p_name == "bias":
                    names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
        return names

    def forward(self, batch: Union[Dict[str, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):  # bare input ids, no padding
            batch = {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
        if "input_ids" not in batch:
            raise KeyError(f"HFEncoder needs a batch dict with 'input_ids' (got keys {sorted(batch)}); tokenize the "
                           f"domain with the data option `tokenizer`")
        inputs = {k: v for k, v in batch.items() if k in self._forward_keys}
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        hidden = self.model(**inputs).last_hidden_state
        pooled = masked_mean(hidden, mask) if self.pooling == "mean" else hidden[:, 0]
        pooled = pooled.float()
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled

    def extra_repr(self) -> str:
        return (f"name_or_path={self.name_or_path!r}, pooling={self.pooling!r}, out_features={self.out_features}, "
                f"frozen={self.frozen}")


def write_tiny_bert(folder: str | os.PathLike, words: List[str], hidden: int = 32, layers: int = 2, heads: int = 2,
                    max_position: int = 128, seed: int = 0) -> str:
    """Write a tiny, randomly initialised BERT and its WordPiece tokenizer to ``folder`` (``save_pretrained``).

    For offline smoke tests and demos: ``HFEncoder(folder)`` and ``--data.options '{tokenizer: <folder>}'`` then work
    with no download. The vocabulary is ``[PAD] [UNK] [CLS] [SEP] [MASK]`` plus the distinct lower-cased ``words``.
    Returns the folder.
    """
    transformers = require_transformers()
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab: Dict[str, int] = {t: i for i, t in enumerate(specials)}
    for w in words:
        w = w.lower()
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=2 * hidden,
                                     max_position_embeddings=max_position, pad_token_id=0)
    model = transformers.BertModel(config)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)
