# What a greedy decoding step costs that does not shrink with the batch, on the bench's model (random
# weights, recipe sizes) and its first decoding batch (64 validation sentences, 30 new tokens, EOS
# forbidden), prepared as Translator prepares it, on torch's threads:
#   step_ms_by_rows   ms a step decoding the first 1, 8, 32 and 64 sentences (median of 5 decodes);
#   split             the 4 bench batches whole, as 2 halves and as 4 quarters decoded one after the
#                     other (7 interleaved repeats; ms a 64-sentence batch): what a smaller batch costs;
#   linears_us        the decoder's 18 products of one step (PackedLinear), called in turn as a step
#                     calls them, at 1 and 64 rows: µs a product (median of 30 cycles);
#   cross_attention_us  one cross-attention call (64 rows, 4 heads, one query; keys and values as the
#                     cache holds them: views of a (64, S, 512) projection) with hot caches and after
#                     48 MB of other memory traffic, at S = 16 and 39 (the batch's padded length).
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-decode-step-cost.py OUT.json
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench.run import FixedLength, git_commit, interleaved, record_decoding_setup
from pipeline.decoding import generate
from pipeline.translator import inference_model


def median_seconds(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(out: str) -> None:
    load = os.getloadavg()[0]
    settings, sources, config, model = record_decoding_setup()
    fixed = FixedLength(inference_model(model))
    steps = settings.max_new_tokens
    result = {"script": "bench/results/2026-11-27-decode-step-cost.py", "commit": git_commit(),
              "threads": torch.get_num_threads(), "load_average_at_start": load,
              "batch": list(sources[0].shape), "padding_fraction": [round(float((s == 0).float().mean()), 3)
                                                                    for s in sources]}
    result["step_ms_by_rows"] = {
        rows: round(median_seconds(lambda: generate(fixed, sources[0][:rows], config, beam=1), 5) / steps * 1e3, 2)
        for rows in (1, 8, 32, 64)}

    def parts(n):
        def decode():
            for src in sources:
                size = src.size(0) // n
                for i in range(n):
                    generate(fixed, src[i * size:(i + 1) * size], config, beam=1)
        return decode
    split = interleaved({"whole": parts(1), "halves": parts(2), "quarters": parts(4)}, 7, settle_s=0.3)
    result["split"] = {name: {"median_ms_per_batch": round(statistics.median(t) / len(sources) * 1e3, 1),
                              "ms_per_batch": [round(x / len(sources) * 1e3, 1) for x in t]}
                       for name, t in split.items()}

    linears = []
    for layer in fixed.model.decoder_layers:
        linears += [layer.self_attn.w_qkv, layer.self_attn.w_o, layer.cross_attn.w_q, layer.cross_attn.w_o,
                    layer.ffn.fc1, layer.ffn.fc2]
    result["linears_mb"] = round(sum(p.in_features * p.out_features * 4 for p in linears) / 1e6, 2)
    result["linears_us"] = {}
    for rows in (1, 64):
        inputs = [torch.randn(rows, p.in_features) for p in linears]
        cycle = median_seconds(lambda: [p(x) for p, x in zip(linears, inputs)], 30, warmup=5)
        result["linears_us"][rows] = round(cycle / len(linears) * 1e6, 1)

    other = torch.randn(48 * 2 ** 20 // 4)
    result["cross_attention_us"] = {}
    for length in (16, 39):
        torch.manual_seed(0)
        kv = torch.randn(64, length, 512)
        k, v = (t.reshape(64, length, 4, 64).transpose(1, 2) for t in kv.chunk(2, dim=-1))
        q, mask = torch.randn(64, 4, 1, 64), torch.ones(64, 1, 1, length, dtype=torch.bool)
        figures = {}
        for name, cold in (("hot", False), ("after_48MB", True)):
            times = []
            for _ in range(45):
                if cold:
                    other.mul_(1.0)
                start = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                times.append(time.perf_counter() - start)
            figures[name] = round(statistics.median(times[5:]) * 1e6, 1)
        result["cross_attention_us"][length] = figures
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
