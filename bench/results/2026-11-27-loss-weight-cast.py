# The A/B script behind bench/results/2026-11-27-loss-weight-cast.json: the recipe's bf16-mixed
# training step (R-Drop, label smoothing, clipping; bench.run's Side.train_step on 6 token-bucket
# batches of Multi30k) with the fused loss casting the LM head's weight to bf16 once per loss
# (loss.product_weight, now) against autocast casting it in every chunk's products (before:
# `_chunked_loss_casting_per_chunk` below, the earlier code). Alternating passes in one process;
# the first check: the same loss and bitwise the same gradients. From the repository root:
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-loss-weight-cast.py [PASSES] [OUT.json]
import json, os, statistics, sys
import torch
from bench.run import alternating_passes, bf16_loss_and_gradients, record_training_setup
from pipeline import loss as L
from pipeline.provenance import cpu_name, git_commit


def _chunked_loss_casting_per_chunk(h1, h2, weight, target, label_smoothing, alpha, chunk_rows, need_grad):
    total = torch.zeros((), dtype=torch.float32, device=h1.device)
    grads = [torch.empty_like(h) for h in (h1, h2) if h is not None] if need_grad else []
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
    for start in range(0, h1.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        states = [h[rows] for h in (h1, h2) if h is not None]
        loss, *logit_grads = L._loss_chunk(*states, *([None] if h2 is None else []), weight, target[rows],
                                           label_smoothing, alpha, need_grad)
        total += loss
        for grad, h, g in zip(grads, states, logit_grads):
            g = g.to(h.dtype) if h.dtype == weight.dtype else g
            grad[rows] = (g @ weight.to(g.dtype)).to(grad.dtype)
            grad_weight += (g.t() @ h.to(g.dtype)).float()
    return total, grads, grad_weight


passes = int(sys.argv[1]) if len(sys.argv) > 1 else 9
out = sys.argv[2] if len(sys.argv) > 2 else "bench/results/2026-11-27-loss-weight-cast.json"
load = os.getloadavg()[0]
variants = {"cast_per_chunk": _chunked_loss_casting_per_chunk, "cast_once": L._chunked_loss}
batches, recipe, model, loss, side = record_training_setup(6)
checked = {}
for name, fn in variants.items():
    L._chunked_loss = fn
    checked[name] = bf16_loss_and_gradients(model, loss, batches[0], recipe["label_smoothing"])
same = checked["cast_per_chunk"][0] == checked["cast_once"][0] and all(
    torch.equal(a, b) for a, b in zip(checked["cast_per_chunk"][1], checked["cast_once"][1]))


def epoch(name):
    L._chunked_loss = variants[name]
    for b in batches:
        side.train_step(b, True, recipe["label_smoothing"])


seconds = alternating_passes(epoch, list(variants), passes)
L._chunked_loss = variants["cast_once"]
medians = {k: statistics.median(v) for k, v in seconds.items()}
result = {
    "what": "6 recipe training steps (bf16-mixed, R-Drop 1.0, label smoothing 0.1, clip 1.0; bench.run Side.train_step), "
            "the fused loss casting the LM head weight once per loss vs in every chunk's products",
    "command": f"PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-loss-weight-cast.py {passes} {out}",
    "commit": git_commit(), "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
    "loadavg_1min_at_start": round(load, 2), "passes": passes,
    "real_target_tokens": int(sum(int(b.n_tokens) for b in batches)),
    "same_loss_and_gradients": same, "seconds": seconds,
    "median_s": {k: round(v, 4) for k, v in medians.items()},
    "speedup_median": round(medians["cast_per_chunk"] / medians["cast_once"], 3),
    "speedup_of_pairs_median": round(statistics.median(a / b for a, b in zip(seconds["cast_per_chunk"], seconds["cast_once"])), 3),
}
print(json.dumps(result, indent=1))
with open(out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
