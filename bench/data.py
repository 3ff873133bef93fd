"""Scale bench of the data path: from a corpus on disk to the first training step.

    python -m bench.data [--pairs 4500000] [--scratch DIR] [--out PATH.json]     (`make bench-data PAIRS=...`)

Writes a deterministic synthetic parallel corpus (Multi30k training pairs recombined and
perturbed: pairs of captions joined, numbers, typos, swapped words, casing, a few empty and
over-long pairs, so BPE and the filters have real work) at 1/9, 1/3 and all of --pairs, as
parallel text (DIR/train.de + DIR/train.en, with Multi30k's validation split as
DIR/validation.de/.en; --format jsonl for .jsonl files), then runs the real data path on each:
`TranslationDataModule` with the data settings of the recipe (configs/multi30k.yaml: languages,
vocab_size, max_len, max_tokens) and --tokenizer-sample / --num-proc, under a Lightning
`Trainer` that stops after one training step of the recipe's model.

Each size runs twice, each time in a fresh process: cold (empty run directory: raw Arrow copy,
tokenizer training, tokenization, filtering, sampler, first step) and warm (the same run
directory, as a resumed run finds it: tokenizer and caches are read). Per size the JSON has:

  pairs                      training pairs in the corpus
  peak_rss_mb                peak resident memory of the cold run's process tree (ru_maxrss of
                             that child from wait4, the largest of it and the tokenizing
                             processes it waited for), and peak_rss_mb_warm for the warm run
  tokenizer_s                tokenizer training (sample read + BPE), cold
  tokenized_pairs_per_s      training pairs / seconds of the tokenization map, cold
  encode_batch_pairs_per_s   the limit: raw `tokenizers` encode_batch (source + target) on
                             --encode-pairs pairs of the same corpus, same process and tokenizer
  cache_mb                   the run's data-cache folder on disk (raw Arrow + tokenized),
                             with raw_arrow_mb and tokenized_mb
  sampler_build_s            TokenBucketSampler of the training split, first epoch planned
  first_step_s_cold/warm     process start to the end of the first training step
  kept_pairs, timings_cold/warm (the datamodule's own step timings)

Targets (on an idle machine; the 1-minute load average at start is recorded): peak RSS at
most 3 GB at 4.5M pairs and growing less than 20% from 0.5M to 4.5M; tokenized pairs/s at
least 50% of the encode_batch rate; first step at most 10 min cold and 1 min warm at 4.5M.
"""

from __future__ import annotations

import time

START = time.monotonic()  # a child's "process start" for first_step_s (before the heavy imports)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.report import write_result
from bench.tables import data_table
from pipeline.provenance import cpu_name, git_commit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"peak_rss_mb_max": 3072, "peak_rss_growth_max": 0.20, "tokenized_vs_encode_batch_min": 0.5,
           "first_step_s_cold_max": 600, "first_step_s_warm_max": 60}


@dataclass
class Settings:
    """Everything that fixes the workload; saved in the JSON."""

    pairs: int = 4_500_000  # the largest size; the others are 1/9 and 1/3 of it
    scratch: str = "/tmp/pipeline-bench-data"  # corpora and run directories (caches) go here
    format: str = "text"  # text (train.de + train.en) or jsonl
    recipe: str = "configs/multi30k.yaml"  # data settings and model of the first step
    tokenizer_sample: int = 1_000_000
    num_proc: int = 2
    encode_pairs: int = 100_000  # pairs for the raw encode_batch rate
    seed: int = 0
    source: str = "../shared/data/multi30k"  # the sentences recombined


def sizes(pairs: int) -> list[int]:
    return sorted({max(1, pairs // 9), max(1, pairs // 3), pairs})


# -- the synthetic corpus ----------------------------------------------------------------------
def read_jsonl(path: Path, keys: tuple[str, str]) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as f:
        return [(row[keys[0]], row[keys[1]]) for row in map(json.loads, f)]


def typo(word: str, rng: random.Random) -> str:
    if len(word) < 3:
        return word + word[-1]
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swap two letters
    if kind == 1:
        return word[:i] + word[i] + word[i:]  # double a letter
    return word[:i] + word[i + 1:]  # drop a letter


def perturb(words: list[str], rng: random.Random) -> list[str]:
    if rng.random() < 0.3:
        i = rng.randrange(len(words))
        words[i] = typo(words[i], rng)
    if rng.random() < 0.15 and len(words) > 3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    if rng.random() < 0.1:
        i = rng.randrange(len(words))
        words[i] = words[i].upper()
    return words


def synthetic_pairs(base: list[tuple[str, str]], n: int, seed: int):
    """n deterministic (de, en) pairs made from `base`."""
    rng = random.Random(seed)
    for _ in range(n):
        de, en = base[rng.randrange(len(base))]
        r = rng.random()
        if r < 0.002:
            yield de, ""  # an empty side (dropped by the filter)
            continue
        if r < 0.004:
            yield " ".join([de] * 12), " ".join([en] * 12)  # over-long (dropped by max_len)
            continue
        if r < 0.5:
            de2, en2 = base[rng.randrange(len(base))]
            de, en = f"{de} {de2}", f"{en} {en2}"
        de_words, en_words = de.split(), en.split()
        if rng.random() < 0.25:
            number = str(rng.randrange(10000))
            de_words.insert(0, number)
            en_words.insert(0, number)
        yield " ".join(perturb(de_words, rng)), " ".join(perturb(en_words, rng))


def write_corpus(folder: Path, n: int, s: Settings, src: str, tgt: str) -> Path:
    """The corpus of n training pairs (reused when it exists with the same settings)."""
    marker = folder / "corpus.json"
    spec = {"pairs": n, "format": s.format, "seed": s.seed, "source": s.source, "languages": [src, tgt],
            "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = ROOT / s.source if not Path(s.source).is_absolute() else Path(s.source)
    base = read_jsonl(source / "train.jsonl", (src, tgt))
    validation = read_jsonl(source / "validation.jsonl", (src, tgt))
    for split, pairs in (("train", synthetic_pairs(base, n, s.seed)), ("validation", iter(validation))):
        if s.format == "jsonl":
            with (folder / f"{split}.jsonl").open("w", encoding="utf-8", buffering=1 << 20) as f:
                for a, b in pairs:
                    f.write(json.dumps({src: a, tgt: b}, ensure_ascii=False) + "\n")
        else:
            with (folder / f"{split}.{src}").open("w", encoding="utf-8", buffering=1 << 20) as fa, \
                    (folder / f"{split}.{tgt}").open("w", encoding="utf-8", buffering=1 << 20) as fb:
                for a, b in pairs:
                    fa.write(a + "\n")
                    fb.write(b + "\n")
    marker.write_text(json.dumps(spec))
    return folder


# -- one run (a child process) -------------------------------------------------------------------
def recipe(s: Settings) -> dict:
    import yaml

    return yaml.safe_load((ROOT / s.recipe).read_text(encoding="utf-8"))


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20 if path.exists() else 0.0


def child(s: Settings, corpus: Path, run_dir: Path, phase: str, result_file: Path) -> None:
    """Fit for one step on `corpus` with run directory `run_dir`; write the figures to result_file."""
    import lightning as L
    import torch

    from pipeline.datamodule import TranslationDataModule
    from pipeline.model import TransformerConfig
    from pipeline.module import TrainConfig, TranslationModule

    cfg = recipe(s)
    data = {**cfg["data"], "path": str(corpus), "tokenizer_file": str(run_dir / "tokenizer.json"),
            "cache_dir": str(run_dir / "data-cache"), "tokenizer_sample": s.tokenizer_sample,
            "num_proc": s.num_proc, "seed": s.seed}
    dm = TranslationDataModule(**data)
    model_cfg = {k: v for k, v in cfg.get("model", {}).items()}
    model = TranslationModule(TransformerConfig(**{**model_cfg, "vocab_size": data["vocab_size"]}),
                              TrainConfig(**cfg.get("train", {})))
    first_step = {}

    class FirstStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            first_step.setdefault("s", time.monotonic() - START)

    torch.manual_seed(s.seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FirstStep()],
                        precision=cfg.get("trainer", {}).get("precision") or "32-true",
                        use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    result = {"first_step_s": first_step["s"], "kept_pairs": len(dm.splits["train"]),
              "timings": {k: round(v, 3) for k, v in dm.timings.items()}}
    start = time.perf_counter()
    sampler = dm.sampler("train", dm.max_tokens, shuffle=True)
    result["batches"] = len(sampler)
    result["sampler_build_s"] = time.perf_counter() - start
    if phase == "cold":
        pairs = dm.load("train")
        rows = pairs.select(range(min(s.encode_pairs, len(pairs))))[:]
        start = time.perf_counter()
        dm.tokenizer.encode_batch(rows["src"], add_special_tokens=False)
        dm.tokenizer.encode_batch(rows["tgt"], add_special_tokens=False)
        result["encode_batch_pairs_per_s"] = len(rows["src"]) / (time.perf_counter() - start)
        cache = run_dir / "data-cache"
        result["cache_mb"] = folder_mb(cache)
        result["raw_arrow_mb"] = folder_mb(cache / "datasets")
        result["tokenized_mb"] = result["cache_mb"] - result["raw_arrow_mb"]
    scale = 1 if sys.platform == "darwin" else 1024
    result["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20
    result["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2 ** 20
    result_file.write_text(json.dumps(result), encoding="utf-8")


def run_child(s: Settings, corpus: Path, run_dir: Path, phase: str) -> dict:
    """One child process; its peak RSS is ru_maxrss of its own rusage (wait4), so sizes and
    phases never share a high-water mark."""
    result_file = run_dir.parent / f"{run_dir.name}-{phase}.json"
    result_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "bench.data", "--child", phase, "--corpus", str(corpus), "--run-dir", str(run_dir),
            "--result", str(result_file), *settings_args(s)]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench child ({phase}, {corpus}) failed with exit code {proc.returncode}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    scale = 1 if sys.platform == "darwin" else 1024
    result["peak_rss_mb"] = usage.ru_maxrss * scale / 2 ** 20
    return result


def settings_args(s: Settings) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in asdict(s).items()]


# -- the whole bench ---------------------------------------------------------------------------
def machine() -> dict:
    import datasets
    import tokenizers
    import torch

    cpu = cpu_name()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30 if hasattr(os, "sysconf") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory, 1) if memory else None,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "datasets": datasets.__version__, "tokenizers": tokenizers.__version__}


def run(s: Settings) -> dict:
    started = time.monotonic()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cfg = recipe(s)
    src, tgt = cfg["data"].get("src_lang", "de"), cfg["data"].get("tgt_lang", "en")
    scratch = Path(s.scratch)
    rows = []
    for n in sizes(s.pairs):
        print(f"bench-data: {n} pairs: writing the corpus", flush=True)
        t = time.perf_counter()
        corpus = write_corpus(scratch / f"corpus-{n}-{s.format}-seed{s.seed}", n, s, src, tgt)
        corpus_s = time.perf_counter() - t
        run_dir = scratch / f"run-{n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"bench-data: {n} pairs: cold run", flush=True)
        cold = run_child(s, corpus, run_dir, "cold")
        print(f"bench-data: {n} pairs: warm run", flush=True)
        warm = run_child(s, corpus, run_dir, "warm")
        rows.append({
            "pairs": n, "kept_pairs": cold["kept_pairs"], "peak_rss_mb": round(cold["peak_rss_mb"], 1),
            "peak_rss_mb_warm": round(warm["peak_rss_mb"], 1),
            "self_peak_rss_mb": round(cold["self_peak_rss_mb"], 1),
            "workers_peak_rss_mb": round(cold["workers_peak_rss_mb"], 1),
            "tokenizer_s": round(cold["timings"].get("tokenizer_s", 0.0), 2),
            "tokenized_pairs_per_s": round(n / cold["timings"]["tokenize_train_s"], 1),
            "encode_batch_pairs_per_s": round(cold["encode_batch_pairs_per_s"], 1),
            "cache_mb": round(cold["cache_mb"], 1), "raw_arrow_mb": round(cold["raw_arrow_mb"], 1),
            "tokenized_mb": round(cold["tokenized_mb"], 1),
            "sampler_build_s": round(cold["sampler_build_s"], 3), "batches": cold["batches"],
            "first_step_s_cold": round(cold["first_step_s"], 2), "first_step_s_warm": round(warm["first_step_s"], 2),
            "corpus_write_s": round(corpus_s, 1), "timings_cold": cold["timings"], "timings_warm": warm["timings"],
        })
    first, last = rows[0], rows[-1]
    return {
        "sizes": rows,
        "summary": {
            "peak_rss_growth": round(last["peak_rss_mb"] / first["peak_rss_mb"] - 1, 3),
            "tokenized_vs_encode_batch": round(last["tokenized_pairs_per_s"] / last["encode_batch_pairs_per_s"], 3),
        },
        "targets": TARGETS,
        "commit": git_commit(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_1min_at_start": load,
        "settings": {**asdict(s), "sizes": sizes(s.pairs), "data": cfg["data"]},
        "seconds": round(time.monotonic() - started, 1),
    }


def table(result: dict) -> str:
    """The README's markdown table (bench/tables.py) and a summary line."""
    summary = result["summary"]
    return (data_table(result) + f"\npeak RSS growth {summary['peak_rss_growth']:+.1%} from the smallest to the "
            f"largest size; tokenization at {summary['tokenized_vs_encode_batch']:.0%} of the encode_batch rate; "
            f"load average at start {result['loadavg_1min_at_start']}, {result['seconds']:.0f} s, "
            f"commit {result['commit']}")


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.split("\n\n")[0])
    for key, value in asdict(Settings()).items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--out", help="JSON path (default bench/results/<date>-<commit>-data.json)")
    p.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    s = Settings(**{key: getattr(args, key) for key in asdict(Settings())})
    if s.format not in ("text", "jsonl"):
        p.error("--format is text or jsonl")
    return s, args


def main(argv: list[str] | None = None) -> dict | None:
    s, args = parse_args(argv)
    if args.child:
        child(s, Path(args.corpus), Path(args.run_dir), args.child, Path(args.result))
        return None
    result = run(s)
    write_result(result, args.out, "-data", table(result))
    return result


if __name__ == "__main__":
    main()
