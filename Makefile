# Neural machine translation with a hand-built Transformer. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/multi30k.yaml
SWEEP ?= configs/sweeps/smoke.yaml
ARGS ?=
CKPT ?= runs/multi30k/checkpoints/best.ckpt
DATA ?= ../shared/data/multi30k
SPLIT ?= test
# Empty: the beam the checkpoint's run decodes with (its decoding.beam; `final:` writes the chosen one)
BEAM ?=
# runs/NAME/eval-<checkpoint>-<split>[-beam<N>]: evaluating avg.ckpt does not overwrite best.ckpt's results
OUT ?= $(RUN)/eval-$(basename $(notdir $(CKPT)))-$(SPLIT)$(if $(BEAM),-beam$(BEAM))
RUN ?= $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(CKPT)))))
LAST ?= 5
TEXT ?= Ein Hund rennt durch den Schnee.
FORMAT ?= hf-marian
BENCH_OUT ?=
BENCH_QUICK ?=
HOST ?= 127.0.0.1
PORT ?= 8000
CLIENTS ?= 16
SECONDS ?= 300
export WANDB_MODE ?= offline

.PHONY: help setup train evaluate translate average attention export serve sweep test bench bench-serve bench-evaluate bench-data clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e '.[dev]'
	@# The browser test drives Debian's chromium (Playwright's own download needs the internet).
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	elif [ ! -x /usr/bin/chromium ]; then echo "no /usr/bin/chromium and not root: the browser test will be skipped"; fi
	touch $@

setup: $(VENV)/.installed ## create .venv and install the project (torch 2.13.0 CPU wheel first)

train: setup ## train CONFIG (default configs/multi30k.yaml); extra options in ARGS="--trainer.max_epochs 3"
	$(PY) -m pipeline fit --config $(CONFIG) $(ARGS)

evaluate: setup ## BLEU/chrF of CKPT on DATA/SPLIT (the run's beam; BEAM=N to choose), written to OUT
	$(PY) -m pipeline evaluate --ckpt $(CKPT) --data $(DATA) --split $(SPLIT) $(if $(BEAM),--beam $(BEAM)) --out $(OUT) $(ARGS)

translate: setup ## translate stdin (or type at the prompt) with CKPT
	$(PY) -m pipeline translate --ckpt $(CKPT) $(if $(BEAM),--beam $(BEAM)) $(ARGS)

average: setup ## average the newest LAST (5) epoch checkpoints of RUN (default: CKPT's run) into RUN/checkpoints/avg.ckpt (replaced if there)
	$(PY) -m pipeline average --run $(RUN) --last $(LAST) --out $(RUN)/checkpoints/avg.ckpt --overwrite

attention: setup ## attention heatmaps of CKPT on TEXT="..." into RUN/attention
	$(PY) -m pipeline attention --ckpt $(CKPT) --text "$(TEXT)" --out $(RUN)/attention $(ARGS)

export: setup ## write CKPT as FORMAT (hf-marian or ctranslate2) into RUN/export-FORMAT (an earlier export there is replaced)
	$(PY) -m pipeline export --ckpt $(CKPT) --format $(FORMAT) --out $(RUN)/export-$(FORMAT) --overwrite $(ARGS)

serve: setup ## serve CKPT: HTTP API and a web page at http://HOST:PORT/ (127.0.0.1:8000)
	$(PY) -m pipeline serve --ckpt $(CKPT) --host $(HOST) --port $(PORT) $(ARGS)

test: setup ## run the whole test suite (about 7 minutes on 2 CPU cores after set-up)
	$(PY) -m pytest -q $(ARGS)

sweep: setup ## recipe search with Optuna: SWEEP=configs/sweeps/NAME.yaml (resumable; leaderboard in runs/sweeps/NAME/)
	$(PY) -m pipeline sweep --sweep $(SWEEP) $(ARGS)

bench: setup ## speed against Hugging Face MarianMT; BENCH_QUICK=1 for a short run, BENCH_OUT=path.json
	$(PY) -m bench.run $(if $(BENCH_OUT),--out $(BENCH_OUT)) $(if $(BENCH_QUICK),--quick)

bench-serve: setup ## load bench of `serve` on CKPT: CLIENTS (16) clients for SECONDS (300); BENCH_OUT=path.json
	$(PY) -m bench.serve --ckpt $(CKPT) --clients $(CLIENTS) --seconds $(SECONDS) $(if $(BENCH_OUT),--out $(BENCH_OUT))

bench-evaluate: setup ## `evaluate` of CKPT on validation and test in fp32, int8 and bf16 (beam 4): speed and BLEU
	$(PY) -m bench.evaluate --ckpt $(CKPT) --data $(DATA) $(if $(BENCH_OUT),--out $(BENCH_OUT))

bench-data: setup ## data path at scale: PAIRS (4500000) synthetic pairs, sizes 1/9, 1/3, 1; BENCH_OUT=path.json
	$(PY) -m bench.data $(if $(PAIRS),--pairs $(PAIRS)) $(if $(BENCH_SCRATCH),--scratch $(BENCH_SCRATCH)) $(if $(BENCH_OUT),--out $(BENCH_OUT))

clean: ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache build *.egg-info
