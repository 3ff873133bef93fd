"""Does CTranslate2 running in the same process (its own OpenMP runtime) slow our decoding down
when the two alternate, as in bench.run's interleaved rows? Ours beam 4 timed: before CT2 is
loaded, alternating with CT2 calls, and alternating with CT2 but with a 1 s pause before each
of our calls (lets spinning threads go to sleep)."""
import json, statistics, sys, time, os
from dataclasses import replace
import torch
from bench import run as b
from pipeline.decoding import DecodingConfig, generate
from pipeline.model import Transformer
from pipeline.translator import inference_model

tiny = "--tiny" in sys.argv
s = replace(b.Settings(), **b.QUICK)
if tiny:
    s = replace(s, **b.TINY)
s = replace(s, decode_batches=2)
dm = b.load_data(s)
sources = b.decode_batches(dm, s)
torch.manual_seed(0)
model = Transformer(b.our_config(s)).eval()
fixed = b.FixedLength(inference_model(model))
cfg = DecodingConfig(max_len_ratio=0.0, max_len_extra=s.max_new_tokens)
ours = lambda: [generate(fixed, src, cfg, beam=4) for src in sources]
R = 2 if tiny else 7
def med(fn, pause=0.0, other=None):
    fn()
    ts = []
    for _ in range(R):
        if other: other()
        if pause: time.sleep(pause)
        ts.append(b.timed(fn))
    return statistics.median(ts), min(ts), max(ts)
res = {"load": os.getloadavg()[0]}
res["ours_alone_before_ct2"] = med(ours)
ct2 = b.ct2_translators(model, dm.tokenizer, torch.get_num_threads())
vocab = b.vocabulary(b.Checkpoint(model, dm.tokenizer, ("de", "en"), DecodingConfig(), {}, b.Path("bench")))
toks = [b.ct2_tokens(src, vocab) for src in sources]
theirs = lambda: [b.ct2_generate(ct2["float32"], t, 4, s.max_new_tokens) for t in toks]
res["ours_after_ct2_call"] = med(ours, other=theirs)
res["ours_after_ct2_call_and_1s_pause"] = med(ours, pause=1.0, other=theirs)
res["ours_alone_ct2_loaded"] = med(ours)
res["ct2_alone"] = med(theirs)
res["ct2_after_ours_call"] = med(theirs, other=ours)
print(json.dumps(res, indent=1))
