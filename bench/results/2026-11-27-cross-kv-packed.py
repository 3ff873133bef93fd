# The A/B script behind bench/results/2026-11-27-cross-kv-packed.json: cross-attention keys and
# values projected from the real source positions only (Transformer.fill_cross_caches packs the
# memory, as the encoder packs its own layers) against the way before (each decoder layer
# projected the whole padded memory at its first step). The bench's 4 batches of 64 validation
# sentences (30 new tokens, EOS forbidden, random weights, the model as Translator prepares it);
# first the projections alone (every layer, per batch), then whole greedy and beam-4 decodes, the
# two variants interleaved in one process (the old way restored by replacing fill_cross_caches),
# 9 runs each after a warm-up. Run from the repository root:
#   .venv/bin/python bench/results/2026-11-27-cross-kv-packed.py > out.json
# (it caches the tokenized batches in /tmp/exp/srcs.pt on the first run, as decode-steps.py does).
import json, os, subprocess, sys, time
import torch
sys.path.insert(0, os.getcwd())
from bench.run import FixedLength, record_decoding_setup
from pipeline.decoding import generate
from pipeline.model import Transformer
from pipeline.translator import inference_model

LOAD_AT_START = os.getloadavg()[0]
settings, srcs, config, model = record_decoding_setup()
model = inference_model(model)
fixed = FixedLength(model)
packed_fill = Transformer.fill_cross_caches


def padded_fill(self, memory, src_mask, cache):
    """The way before: every layer projects the whole (B, S) memory, padding included."""
    for layer, (_, cross_cache) in zip(self.decoder_layers, cache):
        cross_cache.append(*layer.cross_attn.project_kv(memory))


VARIANTS = {"padded": padded_fill, "packed": packed_fill}
with torch.inference_mode():
    encoded = [model.encode(src) for src in srcs]


def projections():
    with torch.inference_mode():
        for memory, mask in encoded:
            model.fill_cross_caches(memory, mask, model.new_cache())


def decodes(beam):
    return lambda: [generate(fixed, src, config, beam=beam) for src in srcs]


tokens = {}
for name, fill in VARIANTS.items():  # the same tokens either way
    Transformer.fill_cross_caches = fill
    tokens[name] = [generate(fixed, src, config, beam=b).tokens for b in (1, 4) for src in srcs]
same_tokens = all(torch.equal(a, b) for a, b in zip(tokens["padded"], tokens["packed"]))
times = {}
for figure, fn, per in (("projection_ms_per_batch", projections, 1), ("greedy_ms_per_batch", decodes(1), 1),
                        ("beam4_ms_per_batch", decodes(4), 1)):
    for name, fill in VARIANTS.items():  # warm-up
        Transformer.fill_cross_caches = fill
        fn()
    for _ in range(9):
        for name, fill in VARIANTS.items():
            Transformer.fill_cross_caches = fill
            start = time.perf_counter()
            fn()
            times.setdefault(figure, {}).setdefault(name, []).append((time.perf_counter() - start) / len(srcs) * 1e3)
Transformer.fill_cross_caches = packed_fill
summary = {figure: {name: {"median": round(sorted(v)[4], 2), "min": round(min(v), 2), "max": round(max(v), 2)}
                    for name, v in by.items()} for figure, by in times.items()}
for figure, by in summary.items():
    by["packed_over_padded_speed"] = round(by["padded"]["median"] / by["packed"]["median"], 3)
print(json.dumps({
    "script": "bench/results/2026-11-27-cross-kv-packed.py",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": LOAD_AT_START,
    "batches": [list(s.shape) for s in srcs], "real_token_share": [round(float((s != 0).float().mean()), 3) for s in srcs],
    "same_tokens": same_tokens, "results": summary}, indent=1))
