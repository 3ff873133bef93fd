# Neural machine translation with a hand-built Transformer. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/multi30k.yaml
ARGS ?=
CKPT ?= runs/multi30k/checkpoints/best.ckpt
DATA ?= ../shared/data/multi30k
SPLIT ?= test
BEAM ?= 1
# runs/NAME/eval-<checkpoint>-<split>-beam<N>: evaluating avg.ckpt does not overwrite best.ckpt's results
OUT ?= $(dir $(CKPT))../eval-$(basename $(notdir $(CKPT)))-$(SPLIT)-beam$(BEAM)
RUN ?= $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(CKPT)))))
LAST ?= 5
TEXT ?= Ein Hund rennt durch den Schnee.
FORMAT ?= hf-marian
BENCH_OUT ?=
BENCH_QUICK ?=
export WANDB_MODE ?= offline

.PHONY: help setup train evaluate translate average attention export test bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install the project (torch 2.13.0 CPU wheel first)

train: setup ## train CONFIG (default configs/multi30k.yaml); extra options in ARGS="--trainer.max_epochs 3"
	$(PY) -m pipeline fit --config $(CONFIG) $(ARGS)

evaluate: setup ## BLEU/chrF of CKPT on DATA/SPLIT (BEAM=4 for beam search), written to OUT
	$(PY) -m pipeline evaluate --ckpt $(CKPT) --data $(DATA) --split $(SPLIT) --beam $(BEAM) --out $(OUT) $(ARGS)

translate: setup ## translate stdin (or type at the prompt) with CKPT
	$(PY) -m pipeline translate --ckpt $(CKPT) --beam $(BEAM) $(ARGS)

average: setup ## average the newest LAST (5) epoch checkpoints of RUN (default: CKPT's run) into RUN/checkpoints/avg.ckpt
	$(PY) -m pipeline average --run $(RUN) --last $(LAST) --out $(RUN)/checkpoints/avg.ckpt

attention: setup ## attention heatmaps of CKPT on TEXT="..." into RUN/attention
	$(PY) -m pipeline attention --ckpt $(CKPT) --text "$(TEXT)" --out $(RUN)/attention $(ARGS)

export: setup ## write CKPT as FORMAT (hf-marian) into RUN/export-FORMAT
	$(PY) -m pipeline export --ckpt $(CKPT) --format $(FORMAT) --out $(RUN)/export-$(FORMAT) $(ARGS)

test: setup ## run the whole test suite (about 15 minutes on 2 CPU cores)
	$(PY) -m pytest -q $(ARGS)

bench: setup ## speed against Hugging Face MarianMT; BENCH_QUICK=1 for a short run, BENCH_OUT=path.json
	$(PY) -m bench.run $(if $(BENCH_OUT),--out $(BENCH_OUT)) $(if $(BENCH_QUICK),--quick)

clean: ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache build *.egg-info
