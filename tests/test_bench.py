"""The speed benchmark (`make bench`): its JSON in a toy run, its rows and spreads, the recipe
settings it times, its FLOP count, its decoding protocol, the profile script, and the decoders'
habit of dropping finished rows from the batch (a speed change it measures)."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench import profile as bench_profile
from bench import run as bench
from helpers import ROOT, make_model
from pipeline.batching import Batch
from pipeline.decoding import beam_search, greedy_decode
from pipeline.tokenizer import BOS, EOS, PAD, UNK


def test_tiny_bench_writes_every_figure(tmp_path, multi30k_dir):
    out = tmp_path / "bench.json"
    # Two decoding workers whatever the threads (the tests run on one): every row is made.
    bench.main(["--tiny", "--data", str(multi30k_dir), "--out", str(out), "--decode-workers", "2"])
    result = json.loads(out.read_text(encoding="utf-8"))
    for key in ("commit", "torch", "threads", "cpu", "date", "settings", "padding_efficiency",
                "peak_matmul_gflops", "rows"):
        assert key in result, key
    assert isinstance(result["commit"], str) and result["commit"]
    assert result["torch"] == torch.__version__
    assert isinstance(result["threads"], int) and result["threads"] >= 1
    assert result["settings"]["vocab_size"] == bench.TINY["vocab_size"]
    assert result["settings"]["decode_workers_used"] == 2
    assert [r["figure"] for r in result["rows"]] == [
        "train_fp32", "train_bf16", "train_recipe", "epoch_real_tokens", "epoch_same_batches", "greedy", "beam4",
        "greedy_workers", "beam4_workers", "ct2_greedy", "ct2_beam4", "ct2_int8_beam4", "ct2_beam4_workers",
        "greedy_bf16", "beam4_bf16"]
    rows = {r["figure"]: r for r in result["rows"]}
    for r in result["rows"]:
        peer = "ctranslate2" if r["figure"].startswith("ct2_") else "marian"
        assert r["peer"] == peer
        assert set(r) == {"figure", "unit", "peer", "ours", peer, "ratio", "repeats", "spread"}
        assert r["unit"] in ("real tokens/s", "sentences/s")
        for key in ("ours", peer, "ratio"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["figure"], key)
        assert r["ratio"] == pytest.approx(r["ours"] / r[peer])
        repeats = result["settings"]["epoch_repeats" if r["figure"].startswith("epoch") else "repeats"]
        assert r["repeats"] == repeats
        for name in ("ours", peer):  # min <= median <= max over the repeats; the row shows the median
            spread = r["spread"][name]
            assert 0 < spread["min"] <= spread["median"] <= spread["max"], (r["figure"], name)
            assert spread["median"] == r[name]
    # epoch_same_batches and the CTranslate2 rows compare with the same runs of ours as their neighbours.
    assert rows["epoch_same_batches"]["spread"]["ours"] == rows["epoch_real_tokens"]["spread"]["ours"]
    assert rows["ct2_greedy"]["spread"]["ours"] == rows["greedy"]["spread"]["ours"]
    assert rows["ct2_beam4"]["spread"]["ours"] == rows["beam4"]["spread"]["ours"]
    # The workers rows time both sides again, in the workers; CTranslate2's replicas beside ours in them.
    for name in ("greedy", "beam4"):
        for side in ("ours", "marian"):
            assert rows[f"{name}_workers"]["spread"][side] != rows[name]["spread"][side]
    assert rows["ct2_beam4_workers"]["spread"]["ours"] == rows["beam4_workers"]["spread"]["ours"]
    assert rows["ct2_beam4_workers"]["spread"]["ctranslate2"] != rows["ct2_beam4"]["spread"]["ctranslate2"]
    # ...but the int8 and bf16 rows time our quantized decoding, in runs of their own.
    assert rows["ct2_int8_beam4"]["spread"]["ours"] != rows["beam4"]["spread"]["ours"]
    assert rows["beam4_bf16"]["spread"]["ours"] != rows["beam4"]["spread"]["ours"]
    assert rows["epoch_same_batches"]["spread"]["marian"] != rows["epoch_real_tokens"]["spread"]["marian"]

    recipe = yaml.safe_load((ROOT / "configs" / "multi30k.yaml").read_text(encoding="utf-8"))
    timed = result["settings"]["recipe"]
    for key in ("dropout", "attention_dropout", "activation_dropout"):
        assert timed["model"][key] == recipe["model"][key]
    assert timed["gradient_clip_val"] == recipe["trainer"].get("gradient_clip_val")
    assert timed["precision"] in ("32-true", "bf16-mixed")
    if recipe["trainer"].get("precision") is not None:
        assert timed["precision"] == recipe["trainer"]["precision"]
    ct2 = result["settings"]["ctranslate2"]
    assert ct2["inter_threads"] == 1 and ct2["intra_threads"] == result["threads"]
    assert ct2["workers_row"] == {"inter_threads": 2,
                                  "intra_threads": max(1, result["threads"] // 2)}
    for name in ("ours", "ours_recipe_max_tokens", "marian"):
        assert 0 < result["padding_efficiency"][name] <= 1
    assert result["padding_efficiency"]["ours"] > result["padding_efficiency"]["marian"]
    # ours is what `fit` trains on: counted here on the padded batches of the datamodule's own loader
    fields = {k: v for k, v in result["settings"].items() if k in bench.Settings.__dataclass_fields__}
    dm = bench.load_data(bench.Settings(**{**fields, "recipe": bench.Settings.recipe}))
    dm.max_tokens = result["settings"]["bucket_max_tokens"]
    batches = list(dm.train_dataloader())
    real = sum(int((b.src != PAD).sum()) + int((b.tgt_out != PAD).sum()) for b in batches)
    slots = sum(b.src.numel() + b.tgt_out.numel() for b in batches)
    assert result["padding_efficiency"]["ours"] == pytest.approx(real / slots)
    for precision in ("fp32", "bf16"):
        assert result["peak_matmul_gflops"][precision] > 0
        assert result["train_gflops"][f"ours_{precision}"] > 0
    assert all(v > 0 for v in result["peak_rss_mb"].values())
    assert result["sanity"]["greedy_cache_equals_no_cache"] is True and result["sanity"]["batches_checked"] > 0
    # Our weights, converted, decode alike in CTranslate2 (random weights: a rare near-tie may differ).
    assert result["sanity"]["ct2_greedy_rows_equal_ours"] >= 0.75
    # The README table: one line per row, each target as recorded in the JSON.
    from bench.tables import table

    lines = table(result).splitlines()
    assert len(lines) == 2 + len(result["rows"])
    greedy = next(line for line in lines if line.startswith("| greedy |"))
    verdict = "met" if rows["greedy"]["ratio"] >= result["targets"]["greedy"] else "not met"
    assert greedy.endswith(f"| ≥ {result['targets']['greedy']}× {verdict} |")


def test_rows_report_the_median_and_the_spread():
    r = bench.row("ct2_beam4", [3.0, 1.0, 2.0], [4.0, 4.0, 8.0])
    assert (r["ours"], r["ctranslate2"], r["ratio"], r["repeats"]) == (2.0, 4.0, 0.5, 3)
    assert r["spread"] == {"ours": {"min": 1.0, "median": 2.0, "max": 3.0},
                           "ctranslate2": {"min": 4.0, "median": 4.0, "max": 8.0}}
    assert bench.rates(6.0, {"ours": [2.0, 3.0]}) == {"ours": [3.0, 2.0]}


def test_recipe_precision_null_is_probed_without_leaking_the_choice(tmp_path, monkeypatch):
    """precision null in the recipe: the bench times what `fit` would pick on this machine, and
    leaves no PIPELINE_PRECISION behind for later processes (fit's DDP hand-over variable)."""
    config = yaml.safe_load((ROOT / "configs" / "multi30k.yaml").read_text(encoding="utf-8"))
    config["trainer"]["precision"] = None
    config["trainer"]["gradient_clip_val"] = 0.5
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.delenv("PIPELINE_PRECISION", raising=False)
    settings = bench.recipe_settings(bench.Settings(recipe=str(path)))
    assert settings["precision"] in ("32-true", "bf16-mixed") and "bf16 needs" in settings["precision_reason"]
    assert settings["gradient_clip_val"] == 0.5 and settings["model"]["dropout"] == config["model"]["dropout"]
    assert "PIPELINE_PRECISION" not in os.environ


def test_ours_trains_with_the_fused_loss_of_the_training_module():
    """The bench's loss for ours is TranslationModule's (LM head fused into the loss): the same
    value and gradients as the plain cross-entropy on the logits."""
    model = make_model(0).train()
    src = torch.randint(4, model.cfg.vocab_size, (3, 7))
    tgt = torch.randint(4, model.cfg.vocab_size, (3, 6))
    tgt[1, 4:] = PAD
    batch = Batch(src, tgt, tgt, torch.arange(3))
    torch.manual_seed(1)
    fused = bench.ours_loss(model, batch, 0.1)
    fused.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(1)
    plain = bench.token_cross_entropy(model(src, tgt), tgt, 0.1)
    plain.backward()
    torch.testing.assert_close(fused, plain)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


def test_profile_writes_all_tables(tmp_path, multi30k_dir):
    out = bench_profile.main(["--tiny", "--marian", "--data", str(multi30k_dir), "--out", str(tmp_path / "profile.txt")])
    text = out.read_text(encoding="utf-8")
    assert text.startswith("bench.profile: commit ")
    assert "torch " + torch.__version__ in text and "precision " in text
    train, decodes = text.split("== one training step")[1].split("== one beam-4 decode")
    train, marian = train.split("== MarianMT's training step")
    assert "MarianMT's training step (same batch and settings): " in text
    beam, greedy = decodes.split("== one greedy decode")
    for table in (train, marian, beam, greedy):
        assert "Self CPU" in table
        assert 5 <= sum(line.strip().startswith("aten::") for line in table.splitlines()) <= bench_profile.ROWS
    # A training step, then inference: which backward kernels make a tiny model's top 25 varies from run
    # to run, so the training side is checked by its header, the decode sides by having no backward at all.
    assert "training step: src [" in text and "beam-4 decode:" in text and "greedy decode:" in text
    assert "backward" not in beam.lower() and "backward" not in greedy.lower()
    assert "aten::topk" not in greedy  # greedy takes the max: the greedy table is not the beam one again


@pytest.mark.parametrize("pre_norm", [True, False])
def test_training_flops_match_torch_flop_counter(pre_norm):
    """forward_flops counts every matmul of a training step (x3), as torch's counter sees them
    on the plain attention path (the fused kernel is invisible to the counter)."""
    model = make_model(0, fused_attention=False, pre_norm=pre_norm).train()
    src = torch.randint(4, model.cfg.vocab_size, (3, 7))
    tgt = torch.randint(4, model.cfg.vocab_size, (3, 5))
    src[0, 5:] = PAD
    with FlopCounterMode(display=False) as counter:
        logits = model(src, tgt)
        logits.sum().backward()
    assert counter.get_total_flops() == 3 * bench.forward_flops(model.cfg, 3, 7, 5)
    batch = Batch(src, tgt, tgt, torch.arange(3))
    assert bench.train_flops(model.cfg, batch) == 3 * bench.forward_flops(model.cfg, 3, 7, 5)


@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 4, 9)])
def test_step_products_are_the_products_the_flops_count(shape):
    """The training step's own products (timed alone for the 'step's products' rate) are exactly
    the 3 x forward_flops the step's GFLOP/s divides by, and that rate is a positive measurement."""
    cfg = make_model(0).cfg
    products = bench.step_products(cfg, *shape)
    assert sum(2 * b * m * k * n for b, m, k, n in products) == 3 * bench.forward_flops(cfg, *shape)
    assert bench.products_gflops([products[:4], products[-3:]], torch.float32, repeats=1) > 0


def test_fixed_length_decoding_never_ends_early():
    """The bench forbids EOS so that both sides decode exactly max_len tokens per hypothesis."""
    model = eos_happy_model()
    src = sources(5)
    assert (greedy_decode(model, src, 12) == EOS).any(), "the model ends sentences by itself"
    fixed = bench.FixedLength(model)
    out = greedy_decode(fixed, src, 12)
    assert out.shape == (5, 12) and not (out == EOS).any() and not (out == PAD).any()
    assert torch.equal(out, greedy_decode(fixed, src, 12, use_cache=False))
    tokens, scores = beam_search(fixed, src, 3, 12)
    assert tokens.shape == (5, 3, 12) and not (tokens == EOS).any() and torch.isfinite(scores).all()


def eos_happy_model(seed: int = 0):
    """A random tiny model that often ends sentences, at lengths that differ between sentences."""
    model = make_model(seed, tie_embeddings=False)
    head = nn.Linear(model.cfg.d_model, model.cfg.vocab_size)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 3)
        head.bias.zero_()
        head.bias[[PAD, BOS, UNK]] = -1e4
        head.bias[EOS] = 2.5
    model.lm_head = head
    return model.eval()


def sources(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.full((n, 12), PAD)
    for i in range(n):
        length = 3 + (i * 5) % 9
        out[i, :length] = torch.randint(4, 24, (length,), generator=g)
        out[i, length] = EOS
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dropping_finished_rows_changes_no_output(seed):
    """Greedy and beam search drop finished sentences from the batch; each sentence still gets
    what it gets when decoded alone (where nothing is ever dropped)."""
    model, src = eos_happy_model(seed), sources(12, seed)
    greedy = greedy_decode(model, src, 20)
    lengths = [row.index(EOS) if EOS in row else 20 for row in greedy.tolist()]
    assert len(set(lengths)) > 2, "sentences must end at different steps for rows to be dropped"
    tokens, scores = beam_search(model, src, 3, 20)
    for i in range(src.size(0)):
        alone = src[i: i + 1]
        one = greedy_decode(model, alone, 20)[0].tolist()
        assert one == greedy[i, : len(one)].tolist() and not greedy[i, len(one):].ne(PAD).any()
        tokens_1, scores_1 = beam_search(model, alone, 3, 20)
        for j in range(3):
            row, row_1 = tokens[i, j].tolist(), tokens_1[0, j].tolist()
            assert row[: len(row_1)] == row_1 and all(t == PAD for t in row[len(row_1):])
        torch.testing.assert_close(scores_1[0], scores[i], atol=1e-4, rtol=1e-4)


def test_evaluate_bench_scores_every_precision(tmp_path, ckpt, tatoeba_dir):
    from bench import evaluate as evaluate_bench

    out = tmp_path / "evaluate.json"
    result = evaluate_bench.main(["--ckpt", str(ckpt), "--data", str(tatoeba_dir), "--beam", "2", "--repeats", "1",
                                  "--workers", "2", "--out", str(out)])
    assert json.loads(out.read_text(encoding="utf-8")) == result
    assert set(result["splits"]) == {"validation", "test"}
    for split, n in (("validation", 300), ("test", 500)):
        entries = result["splits"][split]
        assert set(entries) == {"fp32", "int8", "bf16"}
        for e in entries.values():
            assert e["n"] == n and e["beam"] == 2 and 0 <= e["bleu"] <= 100
            assert e["workers"] == 2  # as asked, and used: the splits have several batches
            assert 0 < e["spread"]["min"] <= e["sentences_per_s"] <= e["spread"]["max"]
    for name, verdict in result["quantization"].items():
        drop = round(result["splits"]["validation"]["fp32"]["bleu"] - result["splits"]["validation"][name]["bleu"], 2)
        assert verdict["validation_bleu_drop"] == drop and verdict["kept"] == (drop <= 0.3)
    assert result["quantization"]["fp32"] == {"validation_bleu_drop": 0.0, "kept": True, "speedup_vs_fp32": 1.0}
    from bench.tables import table

    assert len(table(result).splitlines()) == 2 + 6  # a header and a row per split and precision


def test_cuda_bench_refuses_clearly_without_a_gpu(tmp_path, multi30k_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="torch sees no CUDA GPU"):
        bench.main(["--tiny", "--device", "cuda", "--data", str(multi30k_dir), "--out", str(tmp_path / "b.json")])
    assert not (tmp_path / "b.json").exists()


def test_ctranslate2_runs_outside_the_bench_process(tmp_path, multi30k_dir):
    """Loaded into the bench's process, CTranslate2 slowed our decoding 1.31x: its rows must come
    from the worker process, leaving the bench's own process without it."""
    import subprocess
    import sys

    script = ("import sys; from bench import run; "
              f"run.main(['--tiny', '--data', {str(multi30k_dir)!r}, '--out', {str(tmp_path / 'b.json')!r}]); "
              "print('ctranslate2 loaded here:', 'ctranslate2' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ctranslate2 loaded here: False" in done.stdout
    rows = {r["figure"]: r for r in json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))["rows"]}
    assert all(rows[f]["ctranslate2"] > 0 for f in ("ct2_greedy", "ct2_beam4", "ct2_int8_beam4"))


def test_ctranslate2_worker_names_what_it_could_not_load(tmp_path):
    from bench.ct2_worker import CT2Worker

    with pytest.raises(RuntimeError, match=re.escape(f"CTranslate2 worker could not load {tmp_path}: ")) as error:
        CT2Worker(str(tmp_path), threads=1, suppress=[])
    assert "exited" not in str(error.value)  # CTranslate2's own complaint, not a worker that failed to start


def test_marian_rdrop_loss_is_ours_written_the_plain_way():
    """train_recipe gives MarianMT the recipe's R-Drop: its plain formula on full logits must be
    the loss that ours computes fused and chunked (pipeline.loss.rdrop_cross_entropy)."""
    from pipeline.loss import rdrop_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(2 * 3, 5, 16)  # two passes of 3 sentences that differ, as two dropout masks make them
    weight = torch.randn(40, 16)
    target = torch.randint(4, 40, (3, 5))
    target[2, 3:] = PAD
    batch = Batch(torch.randint(4, 40, (3, 4)), target, target, torch.arange(3))

    class StandIn:  # a Marian model whose output for the stacked batch is the logits above
        def __call__(self, input_ids, **kwargs):
            assert input_ids.size(0) == 2 * target.size(0)  # the batch runs twice
            return type("Output", (), {"logits": hidden @ weight.t()})()

    theirs = bench.marian_loss(StandIn(), batch, 0.1, rdrop_alpha=1.0)
    torch.testing.assert_close(theirs, rdrop_cross_entropy(hidden, weight, target, 0.1, 1.0))
    plain = (bench.token_cross_entropy((hidden @ weight.t())[:3], target, 0.1)
             + bench.token_cross_entropy((hidden @ weight.t())[3:], target, 0.1)) / 2
    assert theirs > plain  # the KL term between the differing passes counts


def test_ctranslate2_worker_reports_a_failed_call_and_keeps_serving(tmp_path, tokenizer):
    from pathlib import Path

    from bench.ct2_worker import CT2Worker
    from pipeline.checkpoints import Checkpoint
    from pipeline.decoding import DecodingConfig
    from pipeline.export import export_ctranslate2, vocabulary

    checkpoint = Checkpoint(make_model(0, vocab_size=tokenizer.get_vocab_size()), tokenizer, ("de", "en"),
                            DecodingConfig(), {}, Path("test"))
    export_ctranslate2(checkpoint, tmp_path / "ct2")
    sentence = vocabulary(checkpoint)[10:15]
    with CT2Worker(str(tmp_path / "ct2"), threads=1, suppress=[["<pad>"], ["<s>"]]) as worker:
        with pytest.raises(RuntimeError, match="CTranslate2 worker failed to translate: KeyError"):
            worker.translate("float64", [[sentence]], beams=1, n=3)  # not a compute type it loaded
        seconds, (hypotheses,) = worker.translate("int8", [[sentence, sentence]], beams=4, n=3, keep=True)
        assert seconds > 0 and [len(h) for h in hypotheses] == [3, 3]
    assert worker.process.poll() == 0  # closed cleanly


def test_results_line_counts_a_cut_epoch_apart():
    from bench.tables import epochs_phrase

    full = [{"epoch": i, "step": 187 * (i + 1)} for i in range(3)]
    assert epochs_phrase(full) == "3 epochs"
    cut = full + [{"epoch": 3, "step": 187 * 3 + 90}]  # max_time stopped the 4th epoch halfway
    assert epochs_phrase(cut) == "3 full epochs (4 validations, the last after a partial epoch)"


def progress_line(epoch, step, bleu, clock):
    return (f"epoch {epoch} step {step} | train loss 3.000 | val loss 2.000 | val BLEU {bleu} | "
            f"1,000 tok/s | elapsed 0:{clock // 60:02d}:{clock % 60:02d} | remaining ~0:10:00")


RESUMED = "Restored all states from the checkpoint at runs/x/checkpoints/last.ckpt"


@pytest.mark.parametrize("lines, want", [
    # cut after epoch 2, resumed from epoch 1's checkpoint; the clock starts again (no Timer)
    ([(0, 10, 100), (1, 20, 200), (2, 30, 300), RESUMED, (2, 30, 110), (3, 40, 210)],
     [(0, 100), (1, 200), (2, 310), (3, 410)]),
    # the same with the Timer's restored clock, the redone epoch a little faster
    ([(0, 10, 100), (1, 20, 200), (2, 30, 300), RESUMED, (2, 30, 290), (3, 40, 390)],
     [(0, 100), (1, 200), (2, 290), (3, 390)]),
    # two resumptions at epoch ends, clocks starting again, the second one's above the first's
    ([(0, 10, 100), (1, 20, 200), (2, 30, 300), RESUMED, (3, 40, 100), RESUMED, (4, 50, 110)],
     [(0, 100), (1, 200), (2, 300), (3, 400), (4, 510)]),
    # a resumption whose "Restored" line did not reach the log: the step goes back
    ([(0, 10, 100), (1, 20, 200), (2, 30, 300), (2, 30, 110), (3, 40, 210)],
     [(0, 100), (1, 200), (2, 310), (3, 410)]),
    # validations twice an epoch (val_check_interval), no resumption: every line stays
    ([(0, 5, 50), (0, 10, 100), (1, 15, 150), (1, 20, 200)], [(0, 50), (0, 100), (1, 150), (1, 200)]),
])
def test_learning_curve_of_a_log_with_resumptions(tmp_path, lines, want):
    """A run and its resumptions in one log: a resumed process's lines replace the ones it
    redoes, and elapsed counts on from the checkpoint whether the process printed its own clock
    (older logs, runs without max_time) or the Timer's restored one."""
    from bench import curve

    log = tmp_path / "train.log"
    log.write_text("\n".join(x if isinstance(x, str) else progress_line(x[0], x[1], 1.0 + x[1], x[2])
                             for x in lines) + "\n", encoding="utf-8")
    epochs, speed, wall = curve.log_curve(log)
    assert [(e["epoch"], e["elapsed_s"]) for e in epochs] == want
    assert [e["val_bleu"] for e in epochs] == [1.0 + e["step"] for e in epochs]
    assert wall == want[-1][1] and speed == [1000.0] * len(want)


def test_learning_curve_records_the_memory_the_progress_lines_print(tmp_path):
    from bench import curve

    grown = [2.5, 4.25, 4.5, 4.75]
    log = tmp_path / "train.log"
    log.write_text("\n".join(progress_line(i, 10 * (i + 1), 1.0, 100 * (i + 1)) + (f" | memory {gb:.2f} GB" if gb else "")
                             for i, gb in enumerate(grown + [None])) + "\n", encoding="utf-8")
    epochs, _, _ = curve.log_curve(log)
    assert [e.get("memory_gb") for e in epochs] == grown + [None]  # an older line without it: none
    assert curve.memory_summary(epochs) == {"first": 2.5, "last": 4.75, "min": 2.5, "max": 4.75,
                                            "growth_after_first": 0.5, "validations": 4}
    assert curve.memory_summary(epochs[-1:]) is None
