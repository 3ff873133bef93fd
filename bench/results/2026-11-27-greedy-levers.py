# The script behind bench/results/2026-11-27-greedy-levers.json: three levers tried for the greedy
# target (bench.run's greedy row: 64 validation sentences, 30 new tokens, EOS forbidden, random
# weights, the model as Translator prepares it), none kept:
#  1. attention's cost for one query: F.scaled_dot_product_attention at a greedy step's shapes,
#     with head width 4 against 64 and 30 against 48 keys (per call, µs), and over a KV cache's
#     view (a buffer with spare room) against a contiguous copy;
#  2. the batch split in two halves decoded by two Python threads, each with one intra-op thread
#     (CTranslate2's inter_threads idea), against one call on two intra-op threads: one process
#     per variant (changing torch's thread count inside a process slowed its later decodes
#     2x in a first try), 3 alternating pairs, ms per batch (median of 5 runs in each process);
#  3. glibc's malloc kept from returning big blocks to the OS (mallopt M_MMAP_THRESHOLD and
#     M_TRIM_THRESHOLD at 1 GiB, so large tensors are not page-faulted in again): one process per
#     variant, 3 alternating pairs, greedy ms per batch (median of 5 runs in each process).
# Run from the repository root (it caches the tokenized batches in /tmp/exp/srcs.pt, as
# decode-steps.py does):
#   .venv/bin/python bench/results/2026-11-27-greedy-levers.py > out.json
import ctypes, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor

if sys.argv[1:2] == ["--malloc"]:  # one process of lever 3
    if sys.argv[2] == "tuned":
        libc = ctypes.CDLL("libc.so.6")
        assert libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_/M_TRIM_THRESHOLD
import torch
import torch.nn.functional as F
sys.path.insert(0, os.getcwd())
from bench.run import FixedLength, per_call_us, record_decoding_setup
from pipeline.decoding import generate
from pipeline.tokenizer import PAD
from pipeline.translator import inference_model

LOAD_AT_START = os.getloadavg()[0]
settings, srcs, config, model = record_decoding_setup()
fixed = FixedLength(inference_model(model))


def greedy():
    for src in srcs:
        generate(fixed, src, config, beam=1)


def ms_per_batch(fn, runs):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / len(srcs) * 1e3


pool = ThreadPoolExecutor(2)


def half(src):
    return generate(fixed, src[:, :int((src != PAD).sum(1).max())], config, beam=1).tokens


def split_greedy():
    for src in srcs:
        list(pool.map(half, src.chunk(2)))


if sys.argv[1:2] in (["--malloc"], ["--split"]):
    fn = split_greedy if sys.argv[1:3] == ["--split", "two_threads"] else greedy
    if fn is split_greedy:
        torch.set_num_threads(1)  # before any decoding: one intra-op thread per Python thread
        assert all(torch.equal(generate(fixed, src, config, beam=1).tokens, torch.cat(list(pool.map(half, src.chunk(2)))))
                   for src in srcs), "the split batch decodes other tokens"
    fn()
    print(sorted(ms_per_batch(fn, 1) for _ in range(5))[2])
    sys.exit()

result = {"script": "bench/results/2026-11-27-greedy-levers.py",
          "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
          "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": LOAD_AT_START}

# 1. attention for one query (B=64 rows, h=4 heads)
attention = {}
with torch.inference_mode():
    for d in (4, 64):
        for keys in (30, 48):
            q, k, v = torch.randn(64, 4, 1, d), torch.randn(64, 4, keys, d), torch.randn(64, 4, keys, d)
            attention[f"head_width_{d}_keys_{keys}_us"] = round(per_call_us(lambda: F.scaled_dot_product_attention(q, k, v)), 1)
    for room in (34, 62):  # KVCache.GROW = 32: a 30-step decode's buffer holds 34 steps
        q, kb, vb = torch.randn(64, 4, 1, 64), torch.randn(64, 4, room, 64), torch.randn(64, 4, room, 64)
        k, v = kb[:, :, :30], vb[:, :, :30]
        kc, vc = k.contiguous(), v.contiguous()
        attention[f"cache_view_30_of_{room}_us"] = round(per_call_us(lambda: F.scaled_dot_product_attention(q, k, v)), 1)
        attention[f"contiguous_30_vs_room_{room}_us"] = round(per_call_us(lambda: F.scaled_dot_product_attention(q, kc, vc)), 1)
result["attention_one_query"] = attention

# 2. and 3., one process per variant


def processes(flag, variants):
    found = {variant: [] for variant in variants}
    for _ in range(3):
        for variant in variants:
            out = subprocess.run([sys.executable, __file__, flag, variant], capture_output=True, text=True, check=True)
            found[variant].append(round(float(out.stdout.strip().splitlines()[-1]), 1))
    return found


result["split_batch_greedy_ms_per_batch"] = processes("--split", ("one_call", "two_threads"))
result["malloc_thresholds_greedy_ms_per_batch"] = processes("--malloc", ("plain", "tuned"))
print(json.dumps(result, indent=1))
