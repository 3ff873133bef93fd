# The script behind bench/results/2026-11-28-regional-compile.json: does torch.compile of parts of
# a layer (regional compilation: the fused element-wise work between the products, with the
# products left to aten) speed up the recipe's bf16-mixed training step on this CPU, where
# compiling the whole forward ran at 0.79x eager (bench/results/2026-11-27-train-compile-amd.json)?
# One encoder layer of the recipe's model (configs/multi30k.yaml's dropouts), a (104, 24) batch
# (about the recipe's 2,500 tokens), forward and backward under bf16 autocast; variants:
#   eager   the layer as `fit` runs it
#   ffn     torch.compile of the feed-forward residual block (norm, fc1, ReLU, dropouts, fc2, add)
#   layer   torch.compile of the whole layer
# each in its own process (compiled code is process state), alternated over two rounds; then the
# profile of one compiled `ffn` run by kernel (inductor's cpp.enable_kernel_profile), and one
# element-wise function alone: ReLU of a bf16 tensor cast up, cast back, with and without the
# boolean mask that ReLU's backward keeps, and that mask alone.
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-regional-compile.py > bench/results/2026-11-28-regional-compile.json
import json, os, subprocess, sys, time

import torch

if len(sys.argv) > 1:  # one variant in this process
    import torch._inductor.config as inductor_config
    from torch.profiler import profile
    from pipeline.model import EncoderLayer, TransformerConfig
    variant, profiled = sys.argv[1], len(sys.argv) > 2
    inductor_config.cpp.enable_kernel_profile = profiled
    torch.manual_seed(0)
    layer = EncoderLayer(TransformerConfig(dropout=0.3, attention_dropout=0.1, activation_dropout=0.1)).train()
    x = torch.randn(104, 24, 256, requires_grad=True)
    mask = torch.ones(104, 1, 1, 24, dtype=torch.bool)
    if variant == "eager":
        forward = lambda x: layer(x, mask)
    elif variant == "ffn":
        ffn = torch.compile(lambda x: layer.res_ffn(x, layer.ffn))
        forward = lambda x: ffn(layer.res_attn(x, lambda h: layer.self_attn(h, mask=mask)))
    else:
        forward = torch.compile(lambda x: layer(x, mask))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = forward(x)
        y.float().sum().backward()

    start = time.perf_counter()
    for _ in range(3):
        step()
    first_s = time.perf_counter() - start
    if profiled:
        with profile() as prof:
            for _ in range(5):
                step()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
        print(json.dumps([{"name": e.key[:90], "self_ms_per_step": round(e.self_cpu_time_total / 5e3, 2)}
                          for e in rows]))
        sys.exit()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(10):
            step()
        times.append((time.perf_counter() - start) / 10 * 1e3)
    print(json.dumps({"first_3_steps_s": round(first_s, 1), "ms_per_step": sorted(round(t, 2) for t in times)}))
    sys.exit()

def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


load = os.getloadavg()[0]
run = lambda *args: json.loads(subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                                              check=True).stdout.strip().splitlines()[-1])
rounds = [{variant: run(variant) for variant in ("eager", "ffn", "layer")} for _ in range(2)]
medians = {v: [r[v]["ms_per_step"][3] for r in rounds] for v in ("eager", "ffn", "layer")}

torch.set_num_threads(1)
x = torch.randn(104 * 24 * 1024, dtype=torch.bfloat16)  # the FFN's inner activations


def relu_with_mask(x):
    y = torch.relu(x.float())
    return y.to(torch.bfloat16), y <= 0


def relu_only(x):
    return torch.relu(x.float()).to(torch.bfloat16)


def mask_only(x):
    return x.float() <= 0


def time_ms(fn):
    for _ in range(3):
        fn(x)
    start = time.perf_counter()
    for _ in range(20):
        fn(x)
    return round((time.perf_counter() - start) / 20 * 1e3, 3)


elementwise = {"eager_relu_with_mask": time_ms(relu_with_mask), "compiled_relu_with_mask": time_ms(torch.compile(relu_with_mask)),
               "eager_relu_only": time_ms(relu_only), "compiled_relu_only": time_ms(torch.compile(relu_only)),
               "eager_mask_only": time_ms(mask_only), "compiled_mask_only": time_ms(torch.compile(mask_only))}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(json.dumps({
    "what": "torch.compile of parts of an encoder layer (regional compilation) on the recipe's bf16-mixed "
            "forward and backward, one process per variant, two alternated rounds; then one compiled `ffn` run "
            "profiled by kernel, and ReLU with and without its backward mask alone (1 thread, 2,555,904 elements)",
    "command": "PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-regional-compile.py",
    "commit": commit, "cpu": f"{cpu_name()}, {os.cpu_count()} threads, torch {torch.__version__}",
    "load_average_at_start": round(load, 2),
    "rounds": rounds, "median_ms_per_step_by_round": medians,
    "ffn_over_eager": [round(e / f, 3) for e, f in zip(medians["eager"], medians["ffn"])],
    "layer_over_eager": [round(e / f, 3) for e, f in zip(medians["eager"], medians["layer"])],
    "ffn_profile_top_kernels": run("ffn", "profile"),
    "elementwise_ms": elementwise,
}, indent=1))
