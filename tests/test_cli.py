"""The command contract end to end: fit -> test -> evaluate -> translate, one command table for
dispatch and help, old spellings still accepted, and clear errors for bad input."""

import contextlib
import json
import subprocess
import sys

import pytest
import torch
from helpers import DATA, ROOT, run_cli, smoke_fit

from pipeline.cli import COMMANDS

MULTI30K = DATA / "multi30k"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    proc = smoke_fit(root, "--trainer.max_epochs", "2", "--data.train_limit", "1000", "--data.val_limit", "50",
                     "--checkpoint.keep_epochs", "2", "--trainer.max_time", "00:01:00:00", final=True)
    return root / "smoke", proc


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    stderr = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_fit_writes_self_contained_run_directory(smoke_run):
    run, proc = smoke_run
    assert f"run directory: {run}" in proc.stdout
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "tokenizer.json", "config.yaml"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert json.loads(ckpt["tokenizer"]) == json.loads((run / "tokenizer.json").read_text(encoding="utf-8"))
    assert ckpt["hyper_parameters"]["model"]["d_model"] == 64 and tuple(ckpt["languages"]) == ("de", "en")
    assert any(state.get("monitor") == "val/bleu" for state in ckpt["callbacks"].values())


def test_fit_ends_with_results_chosen_on_validation(smoke_run, tmp_path):
    run, proc = smoke_run
    results = json.loads((run / "results.json").read_text())
    assert set(results["candidates"]) == {"best", "average of the last 2 epochs"}
    assert results["chosen_from"] in results["candidates"]
    assert [(g["beam"], g["length_penalty"]) for g in results["grid"]] == [(1, 1.0), (2, 1.0)]
    chosen = max(results["grid"], key=lambda g: g["bleu"])
    assert (results["beam"], results["validation"]["bleu"]) == (chosen["beam"], chosen["bleu"])
    assert results["epochs"] == 2 and results["wall_time_s"] > 0 and results["command"].startswith("python -m")
    assert 0 < results["training_time_s"] < results["wall_time_s"]  # the max_time Timer's count
    final_line = [line for line in proc.stdout.splitlines() if line.startswith("final: test BLEU")]
    assert len(final_line) == 1 and str(run / "results.json") in final_line[0]
    assert not list((run / "checkpoints").glob("avg-last*.ckpt"))  # candidates that lost are removed
    # The final checkpoint is self-contained: evaluate with its own decoding reproduces the test figure.
    run_cli("evaluate", "--ckpt", results["checkpoint"], "--data", MULTI30K, "--split", "test", "--out", tmp_path / "e")
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["beam"] == results["beam"] and metrics["bleu"] == results["test"]["bleu"]
    assert metrics["chrf"] == results["test"]["chrf"]
    # `finalize` reruns the same choice from the run directory alone, and keeps fit's record of
    # the training: from the earlier results.json (the same step), or read back from last.ckpt.
    again = run_cli("finalize", "--run", run)
    redone = json.loads((run / "results.json").read_text())
    assert redone["test"] == results["test"]
    assert "final: test BLEU" in again.stdout
    training = ("epochs", "global_step", "precision", "training_time_s")
    assert {k: redone[k] for k in (*training, "command", "wall_time_s")} == {
        k: results[k] for k in (*training, "command", "wall_time_s")}
    assert redone["finalize_command"] == f"python -m pipeline finalize --run {run}"
    (run / "results.json").unlink()  # a run cut short has none
    run_cli("finalize", "--run", run)
    read_back = json.loads((run / "results.json").read_text())
    assert {k: read_back[k] for k in training[:3]} == {k: results[k] for k in training[:3]}
    assert 0 < read_back["training_time_s"] <= results["training_time_s"]  # as last.ckpt was written
    assert read_back["command"] == read_back["finalize_command"] and read_back["wall_time_s"] is None


def test_learning_curve_from_the_fit_log(smoke_run, tmp_path):
    from bench import curve

    run, proc = smoke_run
    log = tmp_path / "train.log"
    log.write_text(proc.stdout, encoding="utf-8")
    result = curve.main(["--run", str(run), "--log", str(log), "--out", str(tmp_path / "curve.json")])
    assert [e["epoch"] for e in result["epochs"]] == [0, 1]  # one progress line per validation
    assert result["best_val_bleu"] == max(e["val_bleu"] for e in result["epochs"]) >= 0
    assert result["final"]["test"] == json.loads((run / "results.json").read_text())["test"]
    assert result["wall_time_s"] == result["epochs"][-1]["elapsed_s"] > 0
    if sys.platform.startswith("linux"):  # the progress lines print the process's memory there
        assert result["memory_gb"]["validations"] == 2 and 0 < result["memory_gb"]["min"] <= result["memory_gb"]["max"]
    from bench.tables import table  # the README's results table is generated from this JSON

    lines = table(result).splitlines()
    assert lines[3].startswith(f"| test | {result['final']['test']['bleu']:.2f} | {result['final']['test']['chrf']:.2f} |")
    assert lines[-1].startswith("2 epochs in ")


def test_evaluate_writes_metrics_and_hypotheses(smoke_run, tmp_path):
    run, _ = smoke_run
    out = tmp_path / "eval"
    proc = run_cli("evaluate", "--ckpt", run / "checkpoints/best.ckpt", "--data", MULTI30K, "--split", "test",
                   "--out", out, "--beam", "2", "--batch_size", "64")
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"bleu", "chrf", "signature", "n", "data", "split", "src_lang", "tgt_lang", "beam"} <= set(metrics)
    assert metrics["n"] == 1000 and metrics["split"] == "test" and metrics["beam"] == 2
    assert (metrics["src_lang"], metrics["tgt_lang"]) == ("de", "en")
    assert metrics["signature"].startswith("nrefs:1|case:mixed") and 0 <= metrics["bleu"] <= 100
    hyps = (out / "hypotheses.txt").read_text(encoding="utf-8").split("\n")
    assert len(hyps) == 1001 and hyps[-1] == ""  # one line per input, newline-terminated
    assert f"BLEU {metrics['bleu']:.2f}" in proc.stdout


def test_evaluate_jsonl_needs_no_split_and_keeps_order(smoke_run, tmp_path):
    run, _ = smoke_run
    rows = [{"de": "Ein Hund läuft.", "en": "A dog runs."}, {"de": "", "en": "nothing"},
            {"translation": {"de": "x", "en": "y"}}]
    flat = tmp_path / "pairs.jsonl"
    flat.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n", encoding="utf-8")
    proc = run_cli("evaluate", "--ckpt", run / "checkpoints/last.ckpt", "--data", flat, "--out", tmp_path / "e",
                   "--split", "test")  # as `make evaluate` passes it: said to be ignored, not an error
    assert f"--split test ignored: {flat} is one split" in proc.stderr
    hyps = (tmp_path / "e" / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 2 and hyps[1] == ""  # the empty source gives an empty line, in place
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["split"] is None


def test_quantized_decoding_from_the_command_line(smoke_run, tmp_path):
    run, _ = smoke_run
    ckpt = run / "checkpoints/best.ckpt"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"de": "Ein Mann fährt Fahrrad.", "en": "A man rides a bike."}) + "\n", encoding="utf-8")
    run_cli("evaluate", "--ckpt", ckpt, "--data", pairs, "--out", tmp_path / "e", "--quantize", "int8")
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["quantize"] == "int8"
    assert run_cli("translate", "--ckpt", ckpt, "--text", "Ein Mann fährt Fahrrad.", "--quantize", "int8").stdout.strip()
    assert_one_line_error(run_cli("translate", "--ckpt", ckpt, "--text", "Hallo", "--quantize", "int4", check=False),
                          "--quantize")


def test_translate_stdin_and_text(smoke_run):
    run, _ = smoke_run
    ckpt = run / "checkpoints/best.ckpt"
    proc = run_cli("translate", "--ckpt", ckpt, input="Ein Mann fährt Fahrrad.\n   \nZwei Hunde spielen im Schnee.\n")
    lines = proc.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    single = run_cli("translate", "--ckpt", ckpt, "--text", "Ein Mann fährt Fahrrad.")
    assert single.stdout.splitlines() == [lines[0]]  # same model, same greedy output
    # evaluate's decoding options: --max_tokens changes the batches only, --length_penalty is checked
    text = "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n"
    options = ["translate", "--ckpt", ckpt, "--beam", "2", "--length_penalty", "0.6"]
    assert run_cli(*options, "--max_tokens", "8", input=text).stdout == run_cli(*options, input=text).stdout
    bad = run_cli("translate", "--ckpt", ckpt, "--length_penalty", "-1", "--text", "Hallo", check=False)
    assert bad.returncode == 2 and "--length_penalty must be >= 0" in bad.stderr


def test_translate_truncates_over_long_input_with_warning(smoke_run):
    run, _ = smoke_run
    proc = run_cli("translate", "--ckpt", run / "checkpoints/best.ckpt", input="Hund " * 2000 + "\n")
    assert len(proc.stdout.splitlines()) == 1 and "truncated" in proc.stderr


@pytest.mark.parametrize("args, needles", [
    (["--data.path", "../shared/data/does-not-exist"], ["data directory not found", "does-not-exist"]),
    (["--data.src_lang", "fr"], ["['fr']", "'de'", "'en'"]),
    (["--data.val_split", "dev"], ["split 'dev'", "'validation'"]),
    (["--model.d_model", "66"], ["divisible"]),
])
def test_fit_bad_input_is_one_line_error(tmp_path, args, needles):
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, *args, check=False)
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2
    assert not (tmp_path / "smoke").exists()  # so that the corrected command is not refused as "already exists"


@pytest.mark.parametrize("args, needle", [
    (["--data.path", "does-not-exist"], "data directory not found"),  # found in the data's set-up
    (["--trainer.accelerator", "foo"], "trainer: You selected an invalid accelerator"),  # by Lightning's Trainer
    (["--run.logger", "wandb", "--model.max_positions", "8"], "model.max_positions=8"),  # after W&B has started
])
def test_fit_overwrite_with_bad_input_keeps_the_old_run(tmp_path, args, needle):
    old = tmp_path / "smoke" / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the run to replace")
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--run.overwrite", "true",
                   *args, check=False)
    assert_one_line_error(proc, needle)
    assert proc.returncode == 2
    assert old.read_bytes() == b"the run to replace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"]  # nothing set aside is left
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == ["checkpoints"]  # nor written into it


def test_fit_overwrite_replaces_the_old_run_once_it_trains(tmp_path):
    old = tmp_path / "smoke" / "old-file"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the run to replace")
    run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--run.overwrite", "true",
            "--trainer.max_steps", "2", "--data.train_limit", "100", "--data.val_limit", "10",
            "--final.enabled", "false", "--trainer.enable_progress_bar", "false")
    assert not old.exists() and (tmp_path / "smoke/checkpoints/last.ckpt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"]  # the replaced run is gone


@pytest.mark.parametrize("args, needles", [
    (["--model.d_modle", "8"], ["--model.d_modle", "did you mean --model.d_model?", "fit --help"]),
    (["--trainer.max_epoch", "1"], ["did you mean --trainer.max_epochs?"]),  # no abbreviations taken
    (["--model.d_model", "abc"], ["--model.d_model takes int, got 'abc'"]),
    (["--trainer.fast_dev_run", "xx"], ["--trainer.fast_dev_run takes int or bool"]),
    (["--run.logger", "tb"], ["--run.logger takes one of 'wandb', 'csv', got 'tb'"]),
    (["--config", "YAML"], ["model.d_fff", "did you mean --model.d_ff?"]),  # a key in a config file
])
def test_fit_unknown_option_or_wrong_type_is_one_line_error(tmp_path, args, needles):
    yaml_file = tmp_path / "extra.yaml"
    yaml_file.write_text("model:\n  d_fff: 64\n", encoding="utf-8")
    args = [str(yaml_file) if a == "YAML" else a for a in args]
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, *args, check=False)
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2 and "usage:" not in proc.stderr
    assert "deprecated" not in proc.stderr and "--train.d_modle" not in proc.stderr  # a typo, not a moved key
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no run directory


@pytest.mark.parametrize("text, needles", [
    ("model:\n  d_model: [64\n", ["is not valid YAML", "line 3"]),
    ("- model\n- data\n", ["holds a YAML list"]),
    ("model:\n  d_modle: 64\n", ["did you mean --model.d_model?"]),  # a mistyped key as the only config
    ("modle:\n  d_model: 64\n", ["did you mean --model.d_model?"]),  # a mistyped section
])
def test_a_bad_config_file_is_one_line_error(tmp_path, text, needles):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(text, encoding="utf-8")
    proc = run_cli("fit", "--config", yaml_file, "--run.root", tmp_path, check=False)
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2 and not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_command_options_are_one_line_errors(tmp_path):
    proc = run_cli("evaluate", "--ckpt", tmp_path / "x.ckpt", "--bem", "4", check=False)
    assert_one_line_error(proc, "--bem", "did you mean --beam?", "evaluate --help")
    assert proc.returncode == 2 and "usage:" not in proc.stderr
    proc = run_cli("translate", "--ckpt", tmp_path / "x.ckpt", "--beam", "four", check=False)
    assert_one_line_error(proc, "--beam takes int or null, got 'four'")
    assert_one_line_error(run_cli("translate", "--ckpt", tmp_path / "x.ckpt", "--bea", "2", check=False),
                          "did you mean --beam?")


def test_fit_empty_split_is_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--data.path", empty,
                   check=False)
    assert_one_line_error(proc, "empty.jsonl")


def test_fit_refuses_existing_run_directory(smoke_run):
    run, _ = smoke_run
    before = (run / "checkpoints/last.ckpt").stat().st_mtime_ns
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", run.parent, check=False)
    assert_one_line_error(proc, "already exists", "--run.overwrite")
    assert (run / "checkpoints/last.ckpt").stat().st_mtime_ns == before  # nothing overwritten


def test_bad_checkpoints_are_one_line_errors(smoke_run, tmp_path):
    run, _ = smoke_run
    missing = run_cli("translate", "--ckpt", tmp_path / "nope.ckpt", "--text", "Hallo", check=False)
    assert_one_line_error(missing, "checkpoint not found", "nope.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((run / "checkpoints/last.ckpt").read_bytes()[:5000])
    assert_one_line_error(run_cli("translate", "--ckpt", truncated, "--text", "Hallo", check=False),
                          "truncated.ckpt", "not a readable checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert_one_line_error(run_cli("evaluate", "--ckpt", foreign, "--data", MULTI30K, "--split", "test",
                                  "--out", tmp_path / "x", check=False), "foreign.ckpt")


def test_checkpoint_language_mismatch_names_the_keys(smoke_run, tmp_path):
    run, _ = smoke_run
    proc = run_cli("evaluate", "--ckpt", run / "checkpoints/best.ckpt", "--data", DATA / "tatoeba-ko-en",
                   "--split", "test", "--out", tmp_path / "x", check=False)
    assert_one_line_error(proc, "['de']", "'ko'")
    assert not (tmp_path / "x").exists()


def test_bad_decoding_options_and_input_encoding(smoke_run, tmp_path):
    run, _ = smoke_run
    ckpt = run / "checkpoints/best.ckpt"
    assert_one_line_error(run_cli("translate", "--ckpt", ckpt, "--beam", "-1", "--text", "Hallo", check=False),
                          "--beam")
    (tmp_path / "a-file").write_text("x")
    assert_one_line_error(run_cli("evaluate", "--ckpt", ckpt, "--data", MULTI30K, "--split", "test", "--out",
                                  tmp_path / "a-file", "--length_penalty", "-5", check=False), "is a file")
    assert_one_line_error(run_cli("evaluate", "--ckpt", ckpt, "--data", MULTI30K, "--split", "test", "--out",
                                  tmp_path / "e", "--length_penalty", "-5", check=False), "--length_penalty")
    missing = tmp_path / "missing-reference.jsonl"
    missing.write_text(json.dumps({"de": "Ein Hund.", "en": "A dog."}) + "\n" + json.dumps({"de": "Eine Katze.", "en": None})
                       + "\n", encoding="utf-8")
    assert_one_line_error(run_cli("evaluate", "--ckpt", ckpt, "--data", missing, "--out", tmp_path / "e", check=False),
                          "1 of 2 references", "row 2")
    assert_one_line_error(run_cli("attention", "--ckpt", ckpt, "--text", "Hallo", "--out", tmp_path / "att", "--dpi",
                                  "100000", check=False), "--dpi")
    latin1 = "Ein Mädchen läuft.\n".encode("latin-1")
    assert_one_line_error(run_cli("translate", "--ckpt", ckpt, input=latin1, check=False), "not UTF-8")


@pytest.mark.parametrize("config", ["smoke", "multi30k", "tatoeba-ko-en", "transformer-base"])
def test_every_config_parses(config, tmp_path):
    proc = run_cli("fit", "--config", f"configs/{config}.yaml", "--run.root", tmp_path, "--print_config")
    assert "model:" in proc.stdout and "data:" in proc.stdout and "d_model" in proc.stdout


def test_translate_show_beams_lists_scored_hypotheses_best_first(smoke_run):
    run, _ = smoke_run
    proc = run_cli("translate", "--ckpt", run / "checkpoints/best.ckpt", "--beam", "3", "--show_beams",
                   "--text", "Ein Mann fährt Fahrrad.")
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line]
    assert len(rows) == 3
    scores = [float(score) for score, _ in rows]
    assert scores == sorted(scores, reverse=True)
    best = run_cli("translate", "--ckpt", run / "checkpoints/best.ckpt", "--beam", "3", "--text",
                   "Ein Mann fährt Fahrrad.")
    assert best.stdout.splitlines() == [rows[0][1]]


def test_help_lists_every_command_from_the_table():
    out = run_cli("--help").stdout
    for name, command in COMMANDS.items():
        assert f"  {name}" in out and command.summary in out
    for name in COMMANDS:
        proc = run_cli(name, "--help")
        assert "usage:" in proc.stdout and proc.returncode == 0, name
    assert "--length_penalty" in run_cli("evaluate", "--help").stdout
    assert "--run.name" in run_cli("fit", "--help").stdout  # the typed RunConfig group


@pytest.mark.parametrize("typo, suggestion", [("evalute", "evaluate"), ("predict", None)])
def test_unknown_command_lists_all_commands(typo, suggestion):
    proc = run_cli(typo, check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, f"unknown command '{typo}'", ", ".join(COMMANDS))
    if suggestion:
        assert f"did you mean '{suggestion}'" in proc.stderr


def test_test_command_scores_like_evaluate(smoke_run, tmp_path):
    """`python -m pipeline test` prints test BLEU, scored as `evaluate` scores the same split."""
    run, _ = smoke_run
    ckpt = run / "checkpoints/best.ckpt"
    proc = run_cli("test", "--config", "configs/smoke.yaml", "--run.root", run.parent, "--ckpt_path", ckpt,
                   "--trainer.enable_progress_bar", "false")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("test BLEU"))
    run_cli("evaluate", "--ckpt", ckpt, "--data", MULTI30K, "--split", "test", "--out", tmp_path / "e")
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert f"test BLEU {metrics['bleu']:.2f}  chrF {metrics['chrf']:.2f}  on 1000 sentences" in line
    best = run_cli("validate", "--config", "configs/smoke.yaml", "--run.root", run.parent, "--ckpt_path", "best",
                   "--data.val_limit", "50", "--trainer.enable_progress_bar", "false")
    assert "validation BLEU" in best.stdout and "on 50 sentences" in best.stdout
    # precision null (the recipe's: fit measures it) scores in fp32 as evaluate does, without fit's probe
    unset = run_cli("validate", "--config", "configs/smoke.yaml", "--run.root", run.parent, "--ckpt_path", "best",
                    "--data.val_limit", "50", "--trainer.enable_progress_bar", "false", "--trainer.precision", "null")
    assert "precision:" not in unset.stdout + unset.stderr
    assert "callbacks used to create the checkpoint" not in best.stderr + unset.stderr  # Lightning's, for fit only
    scores = [next(line for line in p.stdout.splitlines() if line.startswith("validation BLEU")) for p in (best, unset)]
    assert scores[0] == scores[1]


def test_deprecated_spellings_still_work(smoke_run, tmp_path):
    run, _ = smoke_run
    proc = run_cli("translate", "--ckpt", run / "checkpoints/best.ckpt", "--batch-size", "4", "--text", "Hallo")
    assert "deprecated: --batch-size is now spelled --batch_size" in proc.stderr and proc.stdout.strip()
    # A config in the old layout (training settings under model:) and an old flag.
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  d_model: 32\n  n_heads: 2\n  lr: 0.002\n  val_beam: 2\n", encoding="utf-8")
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--config", old, "--model.warmup_steps", "7",
                   "--run.root", tmp_path, "--print_config")
    assert "--model.warmup_steps is now spelled --train.warmup_steps" in proc.stderr
    assert "old.yaml keeps training settings under model:" in proc.stderr
    import yaml

    config = yaml.safe_load(proc.stdout)
    assert config["model"]["d_model"] == 32 and "lr" not in config["model"]
    assert config["train"]["lr"] == 0.002 and config["train"]["warmup_steps"] == 7
    assert config["decoding"]["beam"] == 2


def test_evaluate_reads_other_formats_without_a_split(smoke_run, tmp_path):
    run, _ = smoke_run
    (tmp_path / "dev.tsv").write_text("de\ten\nEin Hund läuft.\tA dog runs.\nZwei Katzen.\tTwo cats.\n",
                                      encoding="utf-8")
    (tmp_path / "dev.de").write_text("Ein Hund läuft.\nZwei Katzen.\n", encoding="utf-8")
    (tmp_path / "dev.en").write_text("A dog runs.\nTwo cats.\n", encoding="utf-8")
    outputs = []
    for data in (tmp_path / "dev.tsv", tmp_path / "dev"):  # a TSV file, a parallel-text prefix
        out = tmp_path / f"out-{data.name}"
        run_cli("evaluate", "--ckpt", run / "checkpoints/best.ckpt", "--data", data, "--out", out)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n"] == 2 and metrics["split"] is None
        outputs.append((out / "hypotheses.txt").read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1]


def test_read_chunks():
    import io

    from pipeline.commands import read_chunks
    from pipeline.errors import UserError

    text = "\ufeffEin Hund.\r\n안녕하세요\nzwei\u2028Zeilen?\n\nletzte ohne Zeilenende".encode()
    assert list(read_chunks(io.BytesIO(text), 2)) == [["Ein Hund.", "안녕하세요"], ["zwei\u2028Zeilen?", ""],
                                                      ["letzte ohne Zeilenende"]]
    assert list(read_chunks(io.BytesIO(b""), 2)) == []
    with pytest.raises(UserError, match="stdin line 2 is not UTF-8"):
        list(read_chunks(io.BytesIO("gut\nGrüße\n".encode("latin-1")), 10))


def test_translate_reads_a_text_only_stdin(ckpt, monkeypatch, capsys):
    """Called in-process with sys.stdin replaced by a text stream (no bytes underneath, as
    notebooks and test runners do), translate reads its lines as they are."""
    import io

    from pipeline.commands import translate

    monkeypatch.setattr(sys, "stdin", io.StringIO("Ein Hund.\n   \nZwei Katzen.\n"))
    translate(str(ckpt), workers=1)
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # one a line, the blank one blank


def test_translate_prints_each_buffer_of_piped_input_before_reading_on(smoke_run, tmp_path):
    """Piped input is translated --buffer_size lines at a time: the first lines' translations
    come out while the input is still open (a long file streams through)."""
    import queue
    import threading

    ckpt = smoke_run[0] / "checkpoints/best.ckpt"
    with open(tmp_path / "stderr", "wb") as stderr:  # a file: a full stderr pipe could block the child
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "translate", "--ckpt", str(ckpt),
                                 "--buffer_size", "2"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr)
        lines = queue.Queue()  # stdout's lines as they come (b"" at its end), read by a thread
        reader = threading.Thread(target=lambda: [lines.put(line) for line in iter(proc.stdout.readline, b"")]
                                  + [lines.put(b"")], daemon=True)
        reader.start()
        try:
            proc.stdin.write("Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\nEine Frau\n".encode())
            proc.stdin.flush()
            first = []
            with contextlib.suppress(queue.Empty):
                while len(first) < 2 and (line := lines.get(timeout=120)):
                    first.append(line.decode())
            still_reading = proc.poll() is None
            proc.stdin.close()
            proc.wait(timeout=120)
            reader.join(timeout=120)
        finally:
            proc.kill()
    rest = [line.decode() for line in iter(lines.get_nowait, b"")] if not lines.empty() else []
    err = (tmp_path / "stderr").read_text(errors="replace")
    assert len(first) == 2 and still_reading, err  # two translations out, the input still open
    assert proc.returncode == 0, err
    assert len(rest) == 1  # the third line, after the input ended
    whole = run_cli("translate", "--ckpt", ckpt, input="Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n")
    assert "".join(first) == whole.stdout  # the same translations as in one buffer
    assert_one_line_error(run_cli("translate", "--ckpt", ckpt, "--buffer_size", "0", input="Hallo\n", check=False),
                          "--buffer_size")


def test_translate_and_serve_start_without_lightning_or_datasets(smoke_run):
    """`translate` and `serve` import neither Lightning nor `datasets` (about 4 s of start-up that
    decoding does not use: bench/results/2026-11-27-startup.json), with a checkpoint `fit` wrote."""
    ckpt = smoke_run[0] / "checkpoints/best.ckpt"
    heavy = "sorted(m for m in ('lightning', 'lightning_fabric', 'pytorch_lightning', 'datasets') if m in sys.modules)"
    translate = f"import sys; from pipeline.cli import main; main(sys.argv[1:]); print({heavy})"
    serve = (f"import sys; from pipeline.server import create_app; from pipeline.translator import Translator; "
             f"create_app(Translator.from_checkpoint(sys.argv[1], device='cpu')); print({heavy})")
    for code, args in ((translate, ["translate", "--ckpt", str(ckpt), "--text", "Ein Hund."]), (serve, [str(ckpt)])):
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "[]"


def test_ckpt_path_help_says_what_this_project_takes():
    """Lightning's text speaks of its model registry; ours of runs and their best / last."""
    for command, words in (("validate", "best / last"), ("fit", "resume this run")):
        text = " ".join(run_cli(command, "--help").stdout.split())
        assert words in text and "hpc" not in text and "model instance" not in text, command
