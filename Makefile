# Everything a fresh machine needs, in one place. `make demo` and `make test` set up the
# virtual environment themselves; nothing else has to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a bare `torch` from PyPI is a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test setup proto lint bench clean chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[worker,llm,dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/mixprec demo

# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser): installed here when
# missing and we may (root with apt-get); otherwise those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed and could not be: the dashboard's browser tests will skip"; }

test: setup chromium
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

proto: setup
	$(PY) scripts/gen_proto.py

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/propagation.py
	$(PY) benchmarks/apply_latency.py
	$(PY) benchmarks/toggle.py
	$(PY) benchmarks/sweep.py
	$(PY) benchmarks/fp8_gemm.py
	$(PY) benchmarks/dashboard.py
	$(PY) benchmarks/security.py
	$(PY) benchmarks/serving.py

clean:
	rm -rf $(VENV) build *.egg-info
