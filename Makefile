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

# `make -j2 model DATA=...`: the bundled model from scratch (MODEL.md). Five folds of one
# patient split, each trained with configs/bundled.json (60 CPU minutes on one thread; -j2
# trains two at a time); each fold's model scores its own validation patients and the report
# pools all of them (the card's numbers); the five networks are then bundled as one ensemble.
FOLDS := 0 1 2 3 4
POST := --tta --largest-component --min-size 200

model: $(RUN)-cv/summary.json
	$(BIN)/gliomaseg bundle $(foreach f,$(FOLDS),$(RUN)-fold$(f)) --post configs/bundled-post.json \
		-o src/gliomaseg/weights/model.pt --overwrite
	@echo "bundled model: src/gliomaseg/weights/model.pt; cross-validation: $(RUN)-cv/report.html"

cv: $(RUN)-cv/summary.json

$(RUN)-cv/summary.json: $(foreach f,$(FOLDS),$(RUN)-fold$(f)/best.pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $(foreach f,$(FOLDS),$(RUN)-fold$(f)) $(POST) \
		-o $(RUN)-cv --overwrite

$(RUN)-splits.json: | $(STAMP)
	$(BIN)/gliomaseg split $(DATA) --folds 5 --seed 0 -o $@ --overwrite

$(RUN)-fold%/best.pt: | $(RUN)-splits.json
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN)-fold$* --splits $(RUN)-splits.json \
		--val-fold $* --config configs/bundled.json --overwrite
