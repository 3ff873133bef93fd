# The A/B script behind bench/results/2026-11-27-kv-cache-layout.json: the self-attention KV
# cache's buffers laid out (B, capacity, h, d_k) (pipeline.attention.KVCache now: an appended step
# is one contiguous h·d_k run per row) against (B, h, capacity, d_k) (the layout before: a run of
# d_k per row and head). The old layout is rebuilt below as a subclass with the previous
# methods, and pipeline.model's KVCache is swapped between runs, so both run interleaved in one
# process: `evaluate`-style beam 4 (Translator over the 1,000 test2016 sentences, the round-7
# recipe checkpoint, length-sorted batches of up to 128) and the bench's 4 batches of 64
# validation sentences (30 new tokens, EOS forbidden, random weights), greedy and beam 4;
# 7 runs each after a warm-up. Also the time of one append at 512 rows inside a beam-4 decode.
# Run from the repository root:
#   .venv/bin/python bench/results/2026-11-27-kv-cache-layout.py CHECKPOINT > out.json
# (it caches the tokenized batches in /tmp/exp/srcs.pt on the first run, as decode-steps.py does).
import json, os, subprocess, sys, time
import torch
sys.path.insert(0, os.getcwd())
import pipeline.attention as attention
import pipeline.model as model_module
from bench.run import FixedLength, record_decoding_setup
from pipeline.data import load_split
from pipeline.decoding import generate
from pipeline.translator import Translator, inference_model

LOAD_AT_START = os.getloadavg()[0]


class HeadMajorKVCache(attention.KVCache):
    """The layout before: buffers (B, h, capacity, d_k), k and v their plain slices."""

    def append(self, k, v):
        if self.k is None:
            self.k, self.v, self._buffers = k, v, None
            return self.k, self.v
        n, end = len(self), len(self) + k.size(2)
        if not self._in_buffers() or self._buffers[0].size(2) < end:
            self._buffers = tuple(self._grow(old, end + self.GROW) for old in (self.k, self.v))
        buf_k, buf_v = self._buffers
        buf_k[:, :, n:end] = k
        buf_v[:, :, n:end] = v
        self.k, self.v = buf_k[:, :, :end], buf_v[:, :, :end]
        return self.k, self.v

    def move_rows(self, rows, source):
        if self.k is None or not rows.numel():
            return
        if not self._in_buffers():
            return super().move_rows(rows, source)
        n = len(self)
        for buf in self._buffers:
            filled = buf[:, :, :n]
            filled.index_copy_(0, rows, filled.index_select(0, source))

    @staticmethod
    def _filled(buf, n):
        return buf[:, :, :n]

    def _in_buffers(self):  # the base class checks for its own (transposed) layout's strides
        if self._buffers is None:
            return False
        buf = self._buffers[0]
        return (self.k.data_ptr() == buf.data_ptr() and self.v.data_ptr() == self._buffers[1].data_ptr()
                and self.k.shape[:2] == buf.shape[:2] and self.k.stride() == buf.stride())

    @staticmethod
    def _select(buf, index, n):
        new = buf.new_empty((index.numel(),) + buf.shape[1:])
        torch.index_select(buf[:, :, :n], 0, index, out=new[:, :, :n])
        return new

    @staticmethod
    def _grow(old, capacity):
        buf = old.new_empty(old.size(0), old.size(1), capacity, old.size(3))
        buf[:, :, :old.size(2)] = old
        return buf


VARIANTS = {"head_major": HeadMajorKVCache, "step_major": attention.KVCache}
settings, srcs, config, model = record_decoding_setup()
fixed = FixedLength(inference_model(model))
translator = Translator.from_checkpoint(sys.argv[1], beam=4, device="cpu")
test = list(load_split(settings.data, "test", "de", "en")["src"])

figures = {
    "evaluate_beam4_sentences_per_s": lambda: len(test) / timed(lambda: translator.translate(test)),
    "bench_greedy_ms_per_batch": lambda: timed(lambda: [generate(fixed, s, config, beam=1) for s in srcs]) / len(srcs) * 1e3,
    "bench_beam4_ms_per_batch": lambda: timed(lambda: [generate(fixed, s, config, beam=4) for s in srcs]) / len(srcs) * 1e3,
}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


outputs = {}
for name, cls in VARIANTS.items():
    model_module.KVCache = cls
    outputs[name] = ([generate(fixed, s, config, beam=b).tokens for b in (1, 4) for s in srcs],
                     translator.translate(test[:300]))
same = (all(torch.equal(a, b) for a, b in zip(outputs["head_major"][0], outputs["step_major"][0]))
        and outputs["head_major"][1] == outputs["step_major"][1])

# one append at 512 rows (beam 4 x 128 sentences) inside beam-4 decodes of the test set
append_us = {}
for name, cls in VARIANTS.items():
    model_module.KVCache = cls
    original, found = cls.append, []

    def timed_append(self, k, v, original=original, found=found):
        start = time.perf_counter()
        result = original(self, k, v)
        if k.size(0) == 512 and self._buffers is not None:
            found.append((time.perf_counter() - start) * 1e6)
        return result

    cls.append = timed_append
    translator.translate(test[:256])
    cls.append = original
    append_us[name] = round(sorted(found)[len(found) // 2], 1)

runs = {}
for figure, fn in figures.items():
    for name, cls in VARIANTS.items():  # warm-up
        model_module.KVCache = cls
        fn()
    for _ in range(7):
        for name, cls in VARIANTS.items():
            model_module.KVCache = cls
            runs.setdefault(figure, {}).setdefault(name, []).append(fn())
model_module.KVCache = attention.KVCache
summary = {}
for figure, by in runs.items():
    summary[figure] = {name: {"median": round(sorted(v)[3], 1), "min": round(min(v), 1), "max": round(max(v), 1)}
                       for name, v in by.items()}
    new, old = summary[figure]["step_major"]["median"], summary[figure]["head_major"]["median"]
    summary[figure]["step_major_speedup"] = round(new / old if "per_s" in figure else old / new, 3)
print(json.dumps({
    "script": "bench/results/2026-11-27-kv-cache-layout.py", "checkpoint": sys.argv[1],
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": LOAD_AT_START,
    "same_outputs": same, "append_at_512_rows_median_us": append_us, "results": summary}, indent=1))
