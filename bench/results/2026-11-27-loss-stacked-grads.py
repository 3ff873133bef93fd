# The A/B script behind bench/results/2026-11-27-loss-stacked-grads.json: the recipe's bf16-mixed
# training step (R-Drop, label smoothing, clipping; bench.run's Side.train_step on 6 token-bucket
# batches of Multi30k) with the fused loss's gradients computed another way (both
# R-Drop passes' logit gradients stacked in one reused bf16 buffer: one product for the states'
# gradients, one for the weight's, added in place to the fp32 sum: `_chunked_loss_stacked` below, tried
# and not kept) against loss._chunked_loss as it is (two products per pass, a fresh fp32 copy of each
# (V, d) product).
# Alternating passes in one process; the first check: the same loss, and how far the gradients move
# (the weight's chunk gradient is now rounded to bf16 once per chunk instead of once per pass).
# From the repository root:
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-loss-stacked-grads.py [PASSES] [OUT.json]
import json, os, statistics, sys
import torch
from bench.run import alternating_passes, bf16_loss_and_gradients, record_training_setup
from pipeline import loss as L
from pipeline.provenance import cpu_name, git_commit


def _chunked_loss_stacked(h1, h2, weight, target, label_smoothing, alpha, chunk_rows, need_grad):
    """The variant tried: both passes' logit gradients stacked in one reused buffer (products' dtype),
    one product for the states' gradients and one for the weight's, added in place to the fp32 sum."""
    total = torch.zeros((), dtype=torch.float32, device=h1.device)
    passes = 1 if h2 is None else 2
    grads = [torch.empty_like(h) for h in (h1, h2)[:passes]] if need_grad else []
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
    weight = L.product_weight(weight)
    if need_grad:
        stacked = weight.new_empty(passes * min(chunk_rows, h1.size(0)), weight.size(0))
        chunk_grad_weight = torch.empty_like(weight)
    for start in range(0, h1.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        states = [h[rows] for h in (h1, h2)[:passes]]
        loss, *logit_grads = L._loss_chunk(*states, *([None] if h2 is None else []), weight, target[rows],
                                           label_smoothing, alpha, need_grad)
        total += loss
        if not need_grad:
            continue
        n = states[0].size(0)
        g = stacked[: passes * n]  # (passes·n, V)
        for i, logit_grad in enumerate(logit_grads[:passes]):
            g[i * n:(i + 1) * n].copy_(logit_grad)
        grad_states = g @ weight  # (passes·n, d)
        for i, grad in enumerate(grads):
            grad[rows] = grad_states[i * n:(i + 1) * n]
        h = torch.cat(states).to(weight.dtype) if passes > 1 else states[0].to(weight.dtype)
        grad_weight.add_(torch.mm(g.t(), h, out=chunk_grad_weight))
    return total, grads, grad_weight


passes = int(sys.argv[1]) if len(sys.argv) > 1 else 9
out = sys.argv[2] if len(sys.argv) > 2 else "bench/results/2026-11-27-loss-stacked-grads.json"
load = os.getloadavg()[0]
variants = {"per_pass": L._chunked_loss, "stacked": _chunked_loss_stacked}
batches, recipe, model, loss, side = record_training_setup(6)
checked = {}
for name, fn in variants.items():
    L._chunked_loss = fn
    checked[name] = bf16_loss_and_gradients(model, loss, batches[0], recipe["label_smoothing"])
same = checked["per_pass"][0] == checked["stacked"][0]
grad_moved = max(float((a - b).norm() / b.norm()) for a, b in zip(checked["per_pass"][1], checked["stacked"][1])
                 if b.norm() > 0)


def epoch(name):
    L._chunked_loss = variants[name]
    for b in batches:
        side.train_step(b, True, recipe["label_smoothing"])


seconds = alternating_passes(epoch, list(variants), passes)
L._chunked_loss = variants["per_pass"]
medians = {k: statistics.median(v) for k, v in seconds.items()}
result = {
    "what": "6 recipe training steps (bf16-mixed, R-Drop 1.0, label smoothing 0.1, clip 1.0; bench.run Side.train_step), "
            "the fused loss's gradients from stacked passes (now) vs per pass (before)",
    "command": f"PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-loss-stacked-grads.py {passes} {out}",
    "commit": git_commit(), "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
    "loadavg_1min_at_start": round(load, 2), "passes": passes,
    "real_target_tokens": int(sum(int(b.n_tokens) for b in batches)),
    "same_loss": same, "largest_gradient_change_relative_norm": grad_moved, "seconds": seconds,
    "median_s": {k: round(v, 4) for k, v in medians.items()},
    "speedup_median": round(medians["per_pass"] / medians["stacked"], 3),
    "speedup_of_pairs_median": round(statistics.median(a / b for a, b in zip(seconds["per_pass"], seconds["stacked"])), 3),
}
print(json.dumps(result, indent=1))
with open(out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
