# The README's two commands are `make demo` and `make test`; both install what they need first.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench bench-gpu device-wheels clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cosmo-data demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_video.py --out bench/results/video.json
	$(VENV)/bin/python bench/bench_models.py --out bench/results/models.json
	$(VENV)/bin/python bench/bench_build.py --out bench/results/build.json
	$(VENV)/bin/python bench/bench_build.py --many --out bench/results/build_many.json
	$(VENV)/bin/python bench/bench_scale.py --out bench/results/scale.json
	$(VENV)/bin/python bench/bench_scale.py --real --out bench/results/scale_real.json
	$(VENV)/bin/python bench/bench_train.py --out bench/results/train.json
	$(VENV)/bin/python bench/bench_dedup.py --out bench/results/dedup.json
	$(VENV)/bin/python bench/bench_asr.py --out bench/results/asr.json
	$(VENV)/bin/python bench/bench_narrate.py --out bench/results/narrate.json
	$(VENV)/bin/python bench/bench_rewrite.py --out bench/results/rewrite.json

# On a GPU machine (see docs/GPU_BENCH.md for a lent one that lacks packages): every GPU path in one run.
bench-gpu: $(STAMP)
	$(VENV)/bin/python bench/bench_gpu.py --out bench/results/gpu.json

# The wheels bench-gpu needs that a lent GPU machine lacks, into .device-wheels/ (at most 60 MiB).
device-wheels: $(STAMP)
	bash scripts/device_wheels.sh

clean:
	rm -rf demo-out bench/results .pytest_cache
