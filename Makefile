# The README's two commands: `make demo` and `make test`. Each sets up .venv
# when it is missing. torch is pinned to a CPU build by constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test venv models bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[ui,train,bench,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edge-assist demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

# A fixed torch thread count: the same weights whatever the core count, and no slow-down
# when another job holds a core (docs/TRAINING.md); on the CPU even
# where there is a GPU, since the committed engines are the CPU run's weights.
models: $(STAMP)
	EDGE_ASSIST_THREADS=2 EDGE_ASSIST_DEVICE=cpu $(VENV)/bin/edge-assist train all --out engines

bench: $(STAMP)
	$(VENV)/bin/edge-assist bench

clean:
	rm -rf $(VENV) out build *.egg-info
