# The A/B script behind bench/results/2026-11-27-packed-linear.json: MKL-packed fp32 linear
# layers (pipeline.translator.PackedLinear) against torch's F.linear, first each product alone at
# a decoding step's shapes, then whole decodes of the bench's 4 batches of 64 validation
# sentences (30 new tokens, EOS forbidden, random weights), greedy and beam 4, the two models
# interleaved run by run (12 runs each after a warm-up); and the memory a packed model takes
# once it has decoded a batch (weights are packed at their first use).
# Run from the repository root:
#   .venv/bin/python bench/results/2026-11-27-packed-linear.py > out.json
# (it caches the tokenized batches in /tmp/exp/srcs.pt on the first run, as decode-steps.py does).
import json, os, subprocess, sys, time
import torch
sys.path.insert(0, os.getcwd())
import pipeline.translator as translator
from bench.run import FixedLength, per_call_us, record_decoding_setup
from pipeline.decoding import generate


LOAD_AT_START = os.getloadavg()[0]


def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


settings, srcs, config, model = record_decoding_setup()

# Memory: a process of its own per variant (`--memory packed|linear`) prepares the model as
# Translator does, decodes one greedy batch (weights pack at their first use) and reports its
# resident memory; the difference is what packing costs.
if sys.argv[1:2] == ["--memory"]:
    if sys.argv[2] == "linear":
        translator.pack_linear_layers = lambda m: m
    generate(FixedLength(translator.inference_model(model)), srcs[0], config, beam=1)
    print(rss_mb())
    sys.exit()
resident = {variant: float(subprocess.run([sys.executable, __file__, "--memory", variant], capture_output=True,
                                          text=True, check=True).stdout.split()[-1])
            for variant in ("linear", "packed")}
memory = {"weights_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
          "process_after_a_greedy_batch_mb": {k: round(v, 1) for k, v in resident.items()},
          "packing_mb": round(resident["packed"] - resident["linear"], 1)}

products = []
with torch.inference_mode():
    for rows, n_in, n_out in ((64, 256, 768), (64, 256, 256), (64, 256, 1024), (64, 1024, 256), (64, 256, 8000),
                              (256, 256, 8000), (256, 256, 1024)):
        linear = torch.nn.Linear(n_in, n_out)
        packed, x = translator.PackedLinear(linear), torch.randn(rows, n_in)
        products.append({"rows": rows, "in": n_in, "out": n_out, "linear_us": round(per_call_us(lambda: linear(x)), 1),
                         "packed_us": round(per_call_us(lambda: packed(x)), 1)})

models = {"packed": FixedLength(translator.inference_model(model))}
pack, translator.pack_linear_layers = translator.pack_linear_layers, lambda m: m
models["linear"] = FixedLength(translator.inference_model(model))
translator.pack_linear_layers = pack
sentences = sum(src.size(0) for src in srcs)
decoding = {}
for beam in (1, 4):
    tokens = {name: [generate(m, src, config, beam=beam).tokens for src in srcs] for name, m in models.items()}
    rates = {name: [] for name in models}
    for run in range(12):
        for name in (list(models) if run % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            for src in srcs:
                generate(models[name], src, config, beam=beam)
            rates[name].append(sentences / (time.perf_counter() - start))
    decoding["greedy" if beam == 1 else f"beam{beam}"] = {
        **{name: {"median": round(sorted(r)[6], 1), "min": round(min(r), 1), "max": round(max(r), 1)}
           for name, r in rates.items()},
        "gain": round(sorted(rates["packed"])[6] / sorted(rates["linear"])[6], 3),
        "tokens_equal": all(torch.equal(a, b) for a, b in zip(tokens["packed"], tokens["linear"]))}

print(json.dumps({
    "what": "fp32 linear layers with MKL-packed weights (PackedLinear) against torch's F.linear: products alone "
            "(median us a call of 5 runs of 300 calls), then decodes (sentences/s over 12 interleaved runs)",
    "command": ".venv/bin/python bench/results/2026-11-27-packed-linear.py",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": f"{open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}, "
           f"{torch.get_num_threads()} threads, torch {torch.__version__}",
    "loadavg_1min_at_start": LOAD_AT_START,
    "memory": memory, "products": products, "decoding_sentences_per_s": decoding}, indent=1))
