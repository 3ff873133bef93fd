"""The command contract end to end: fit -> evaluate -> translate, and clear errors for bad input."""

import json

import pytest
import torch
from cli_utils import DATA, run_cli, smoke_fit

MULTI30K = DATA / "multi30k"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    proc = smoke_fit(root, "--trainer.max_epochs", "1", "--data.train_limit", "1000", "--data.val_limit", "50")
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
    assert ckpt["hyper_parameters"]["d_model"] == 64 and tuple(ckpt["languages"]) == ("de", "en")
    assert any(state.get("monitor") == "val/bleu" for state in ckpt["callbacks"].values())


def test_evaluate_writes_metrics_and_hypotheses(smoke_run, tmp_path):
    run, _ = smoke_run
    out = tmp_path / "eval"
    proc = run_cli("evaluate", "--ckpt", run / "checkpoints/best.ckpt", "--data", MULTI30K, "--split", "test",
                   "--out", out, "--beam", "2", "--batch-size", "64")
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
    run_cli("evaluate", "--ckpt", run / "checkpoints/last.ckpt", "--data", flat, "--out", tmp_path / "e")
    hyps = (tmp_path / "e" / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 2 and hyps[1] == ""  # the empty source gives an empty line, in place


def test_translate_stdin_and_text(smoke_run):
    run, _ = smoke_run
    ckpt = run / "checkpoints/best.ckpt"
    proc = run_cli("translate", "--ckpt", ckpt, input="Ein Mann fährt Fahrrad.\n   \nZwei Hunde spielen im Schnee.\n")
    lines = proc.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    single = run_cli("translate", "--ckpt", ckpt, "--text", "Ein Mann fährt Fahrrad.")
    assert single.stdout.splitlines() == [lines[0]]  # same model, same greedy output


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


def test_fit_unknown_config_key_is_clear_error(tmp_path):
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--model.d_modle", "8",
                   check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "d_modle" in proc.stderr


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
    latin1 = "Ein Mädchen läuft.\n".encode("latin-1")
    assert_one_line_error(run_cli("translate", "--ckpt", ckpt, input=latin1, check=False), "not UTF-8")


@pytest.mark.parametrize("config", ["smoke", "multi30k", "tatoeba-ko-en", "transformer-base"])
def test_every_config_parses(config, tmp_path):
    proc = run_cli("fit", "--config", f"configs/{config}.yaml", "--run.root", tmp_path, "--print_config")
    assert "model:" in proc.stdout and "data:" in proc.stdout and "d_model" in proc.stdout


def test_translate_show_beams_lists_scored_hypotheses_best_first(smoke_run):
    run, _ = smoke_run
    proc = run_cli("translate", "--ckpt", run / "checkpoints/best.ckpt", "--beam", "3", "--show-beams",
                   "--text", "Ein Mann fährt Fahrrad.")
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line]
    assert len(rows) == 3
    scores = [float(score) for score, _ in rows]
    assert scores == sorted(scores, reverse=True)
    best = run_cli("translate", "--ckpt", run / "checkpoints/best.ckpt", "--beam", "3", "--text",
                   "Ein Mann fährt Fahrrad.")
    assert best.stdout.splitlines() == [rows[0][1]]
