# Two commands a new user needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install model cv clean

# `make model DATA=~/data/lgg/kaggle_3m`: retrain the bundled model from scratch (see MODEL.md).
DATA ?= kaggle_3m
RUN ?= runs/bundled

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an open range would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Synthetic patients -> train a small model -> evaluate -> report.html (about 2 minutes on 2 cores).
demo: $(STAMP)
	$(BIN)/gliomaseg demo demo --overwrite
	@echo "open demo/report/report.html"

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf demo .pytest_cache .ruff_cache

model: $(STAMP)
	$(BIN)/gliomaseg split $(DATA) --folds 5 --seed 0 -o $(RUN)-splits.json --overwrite
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN) --splits $(RUN)-splits.json \
		--val-fold 0 --config configs/bundled.json --overwrite
	$(BIN)/gliomaseg evaluate $(DATA) --model $(RUN)/best.pt -o $(RUN)-eval --overwrite \
		--cases $$($(BIN)/python -c "import json; print(*json.load(open('$(RUN)/run.json'))['val'])")
	$(BIN)/python -c "import json; from gliomaseg.checkpoint import bundle; \
		bundle('$(RUN)/best.pt', 'src/gliomaseg/weights/model.pt', json.load(open('configs/bundled-post.json')))"
	@echo "bundled model: src/gliomaseg/weights/model.pt; validation report: $(RUN)-eval/report.html"

# `make cv DATA=...` after `make model`: folds 1-4 of the same recipe (60 CPU minutes each;
# `make -j2 cv` trains two at a time), then each fold's model scores its own validation
# patients and the report pools all 81 (MODEL.md, "Cross-validation").
CV_FOLDS := 1 2 3 4

cv: $(foreach f,$(CV_FOLDS),$(RUN)-fold$(f)/best.pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $(RUN) $(foreach f,$(CV_FOLDS),$(RUN)-fold$(f)) \
		--tta --largest-component --min-size 200 -o $(RUN)-cv --overwrite
	@echo "cross-validation report: $(RUN)-cv/report.html"

$(RUN)-fold%/best.pt: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN)-fold$* --splits $(RUN)-splits.json \
		--val-fold $* --config configs/bundled.json --overwrite
