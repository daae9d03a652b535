# Two commands a new user needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install model cv seeds restart seedpairs variant ensemble nested singles wide clean

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
# patient split, each trained with configs/bundled.json (30 epochs, about 40 CPU minutes on
# one thread; -j2 trains two at a time); each fold's model scores its own validation
# patients and the report pools all of them (the card's numbers); the five networks are then
# bundled as one ensemble.
FOLDS := 0 1 2 3 4
POST := --tta --largest-component --largest-by probability --min-size 200
# Cross-validations also report the post-processing chosen per fold on the other folds
# (docs/metrics.md, "--nested-post"): the estimate that does not score its own choice.
CVPOST := $(POST) --nested-post

model: $(RUN)-cv/summary.json
	$(BIN)/gliomaseg bundle $(foreach f,$(FOLDS),$(RUN)-fold$(f)) --post configs/bundled-post.json \
		-o src/gliomaseg/weights/model.pt --overwrite
	@echo "bundled model: src/gliomaseg/weights/model.pt; cross-validation: $(RUN)-cv/report.html"

cv: $(RUN)-cv/summary.json

$(RUN)-cv/summary.json: $(foreach f,$(FOLDS),$(RUN)-fold$(f)/best.pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $(foreach f,$(FOLDS),$(RUN)-fold$(f)) $(CVPOST) \
		-o $(RUN)-cv --overwrite

$(RUN)-splits.json: | $(STAMP)
	$(BIN)/gliomaseg split $(DATA) --folds 5 --seed 0 -o $@ --overwrite

$(RUN)-fold%/best.pt: | $(RUN)-splits.json
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN)-fold$* --splits $(RUN)-splits.json \
		--val-fold $* --config configs/bundled.json --overwrite

# `make -j2 seeds DATA=...` after `make model`: the evidence for shipping an ensemble
# (MODEL.md, "Why an ensemble"). Fold 0 is trained again with seeds 1 and 2; each network
# and the ensemble of the three score fold 0's validation patients; `compare` prints the
# paired differences (the ensemble against each network, with post-processing and plain),
# then what flip TTA adds to the ensemble.
SEEDS := 1 2
VAL = $$($(BIN)/python -c "import json; print(*json.load(open('$(1)/run.json'))['val'])")
# $(call COMPARE,A,B): B against A, paired per patient, with post-processing and plain.
COMPARE = $(BIN)/gliomaseg compare $(1) $(2) && $(BIN)/gliomaseg compare $(1) $(2) --variant plain

.PRECIOUS: $(RUN)-seed%/best.pt

seeds: $(foreach s,$(SEEDS),$(RUN)-seed$(s)-eval/summary.json) $(RUN)-cv/summary.json
	$(BIN)/gliomaseg bundle $(RUN)-fold0 $(foreach s,$(SEEDS),$(RUN)-seed$(s)) \
		--post configs/bundled-post.json -o $(RUN)-seeds.pt --overwrite
	$(BIN)/gliomaseg evaluate $(DATA) --model $(RUN)-seeds.pt --cases $(call VAL,$(RUN)-fold0) \
		-o $(RUN)-seeds-eval --overwrite
	for a in $(RUN)-cv $(foreach s,$(SEEDS),$(RUN)-seed$(s)-eval); do \
		$(call COMPARE,$$a,$(RUN)-seeds-eval) || exit 1; \
	done
	$(BIN)/gliomaseg compare $(RUN)-seeds-eval $(RUN)-seeds-eval --variant plain +TTA

$(RUN)-seed%-eval/summary.json: $(RUN)-seed%/best.pt
	$(BIN)/gliomaseg evaluate $(DATA) --model $< $(POST) --cases $(call VAL,$(RUN)-seed$*) \
		-o $(RUN)-seed$*-eval --overwrite

$(RUN)-seed%/best.pt: | $(RUN)-splits.json
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN)-seed$* --splits $(RUN)-splits.json \
		--val-fold 0 --config configs/bundled.json --set train.seed=$* --overwrite

# `make -j2 restart DATA=...` after `make model`: does longer training help? (MODEL.md,
# "Longer training"). Each fold's network trains 25 more CPU minutes from its own weights (a
# warm restart at lr 1e-3) and the restarted networks are cross-validated; then each fold's
# two networks, before and after, are bundled as a pair and cross-validated too (each pair
# never trained on its fold, so this ensemble's estimate is a true cross-validation).
# `compare` prints both against the bundled recipe, with post-processing and plain.
RESTART := --set train.lr=0.001 --set train.max_minutes=25

restart: $(RUN)-restart-cv/summary.json $(RUN)-pairs-cv/summary.json $(RUN)-cv/summary.json
	for b in $(RUN)-restart-cv $(RUN)-pairs-cv; do \
		$(call COMPARE,$(RUN)-cv,$$b) || exit 1; \
	done

$(RUN)-restart-cv/summary.json: $(foreach f,$(FOLDS),$(RUN)-restart$(f)/best.pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $(foreach f,$(FOLDS),$(RUN)-restart$(f)) $(CVPOST) \
		-o $(RUN)-restart-cv --overwrite

$(RUN)-pairs-cv/summary.json: $(foreach f,$(FOLDS),$(RUN)-pair$(f).pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $^ $(CVPOST) -o $(RUN)-pairs-cv --overwrite

$(RUN)-pair%.pt: $(RUN)-fold%/best.pt $(RUN)-restart%/best.pt
	$(BIN)/gliomaseg bundle $(RUN)-fold$* $(RUN)-restart$* --post configs/bundled-post.json -o $@ \
		--overwrite

$(RUN)-restart%/best.pt: $(RUN)-fold%/best.pt
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN)-restart$* --splits $(RUN)-splits.json \
		--val-fold $* --config configs/bundled.json --init $< $(RESTART) --overwrite

# `make -j2 seedpairs DATA=...` after `make model` and `make seeds`: does an ensemble of
# independently seeded networks beat one network on every fold? (MODEL.md, "Two seeds per
# fold"). Each fold is trained again with seed 1 (fold 0's seed-1 network is `make seeds`'
# own); the seed-1 networks are cross-validated, then each fold's seed-0 and seed-1 networks
# are bundled as a pair and the five pairs are cross-validated (neither network of a pair
# trained on the fold it scores). `compare` prints the pairs against each seed alone, with
# post-processing and plain, then seed 1 against seed 0.
seedpairs: $(RUN)-seedpairs-cv/summary.json $(RUN)-seed1-cv/summary.json $(RUN)-cv/summary.json
	for a in $(RUN)-cv $(RUN)-seed1-cv; do \
		$(call COMPARE,$$a,$(RUN)-seedpairs-cv) || exit 1; \
	done
	$(BIN)/gliomaseg compare $(RUN)-cv $(RUN)-seed1-cv

$(RUN)-seed1-cv/summary.json: $(RUN)-seed1/best.pt $(foreach f,1 2 3 4,$(RUN)-seed1-fold$(f)/best.pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $(dir $^) $(CVPOST) -o $(RUN)-seed1-cv --overwrite

$(RUN)-seedpairs-cv/summary.json: $(foreach f,$(FOLDS),$(RUN)-seedpair$(f).pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $^ $(CVPOST) -o $(RUN)-seedpairs-cv --overwrite

$(RUN)-seedpair0.pt: $(RUN)-fold0/best.pt $(RUN)-seed1/best.pt
	$(BIN)/gliomaseg bundle $(dir $^) --post configs/bundled-post.json -o $@ --overwrite

$(RUN)-seedpair%.pt: $(RUN)-fold%/best.pt $(RUN)-seed1-fold%/best.pt
	$(BIN)/gliomaseg bundle $(dir $^) --post configs/bundled-post.json -o $@ --overwrite

.PRECIOUS: $(RUN)-seed1-fold%/best.pt

$(RUN)-seed1-fold%/best.pt: | $(RUN)-splits.json
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN)-seed1-fold$* --splits $(RUN)-splits.json \
		--val-fold $* --config configs/bundled.json --set train.seed=1 --overwrite

# `make -j2 variant NAME=ctx1 SET="--set data.context=1" DATA=...`: one change to the bundled
# recipe, measured. Each fold is trained from scratch with configs/bundled.json plus SET into
# $(RUN)-<NAME><fold> (FOLDS="0 1" for some folds only), the runs are cross-validated with the
# nested choice (for two or more folds), and `compare` pairs them per patient with the bundled
# model's own networks on the same patients (`--cv-members`: the baseline needs no retraining),
# with post-processing, plain, and nested. NAME must be new (not fold, seed, restart, pair).
NAME ?= variant
SET ?=

variant: $(RUN)-$(NAME)-cv/summary.json $(RUN)-members-cv/summary.json
	$(call COMPARE,$(RUN)-members-cv,$(RUN)-$(NAME)-cv)
	$(if $(word 2,$(FOLDS)),$(BIN)/gliomaseg compare $(RUN)-members-cv $(RUN)-$(NAME)-cv --variant "nested choice")

$(RUN)-members-cv/summary.json: src/gliomaseg/weights/model.pt | $(STAMP)
	$(BIN)/gliomaseg evaluate $(DATA) --cv-members $(CVPOST) -o $(RUN)-members-cv --overwrite

$(RUN)-$(NAME)-cv/summary.json: $(foreach f,$(FOLDS),$(RUN)-$(NAME)$(f)/best.pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $(dir $^) $(if $(word 2,$^),$(CVPOST),$(POST)) \
		-o $(RUN)-$(NAME)-cv --overwrite

.PRECIOUS: $(RUN)-$(NAME)%/best.pt

$(RUN)-$(NAME)%/best.pt: | $(RUN)-splits.json
	OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(RUN)-$(NAME)$* --splits $(RUN)-splits.json \
		--val-fold $* --config configs/bundled.json $(SET) --overwrite

# `make ensemble NAMES="fg80 dice80" [CKPT=last.pt]` after `make model` and `make variant` for
# each NAME: each fold's bundled network and its NAMES networks as one ensemble, cross-validated
# (no member trained on the fold it scores) and compared per patient with the bundled networks
# (MODEL.md, "Crops centred on tumour more often", "Four networks per fold"). CKPT=last.pt
# takes every network's last epoch instead of its best on the fold it scores; with no NAMES,
# that cross-validates the bundled networks at their last epoch.
NAMES ?=
CKPT ?= best.pt
EMPTY :=
ENS := $(RUN)-ens$(subst $(EMPTY) ,,$(foreach n,$(NAMES),-$(n)))$(if $(filter last.pt,$(CKPT)),-last)

ensemble: $(ENS)-cv/summary.json $(RUN)-members-cv/summary.json
	$(call COMPARE,$(RUN)-members-cv,$(ENS)-cv)
	$(BIN)/gliomaseg compare $(RUN)-members-cv $(ENS)-cv --variant "nested choice"

$(ENS)-cv/summary.json: $(foreach f,$(FOLDS),$(ENS)-fold$(f).pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $^ $(CVPOST) -o $(ENS)-cv --overwrite

$(ENS)-fold%.pt: $(RUN)-fold%/best.pt $(foreach n,$(NAMES),$(RUN)-$(n)%/best.pt)
	$(BIN)/gliomaseg bundle $(addsuffix $(CKPT),$(dir $^)) --post configs/bundled-post.json \
		-o $@ --overwrite

# `make -j2 nested [OUTERS="0 1"] DATA=...`: the shipped structure, an ensemble of cross-validation
# networks, on patients none of its networks trained on (MODEL.md, "An ensemble of fold
# networks on patients none of them saw"). Outer fold k's ensemble has one network per other
# fold j, trained on the three remaining folds; the network of the pair (j, k) serves outer
# folds j and k alike (`gliomaseg split --pair-of`), so all five outer folds need ten networks.
# Each is taken at its last epoch: its validation folds are j and k, which must not choose it.
# The outer ensembles are cross-validated together (a bundle's validation patients are those
# none of its networks trained on) and compared per patient with the bundled networks:
# with post-processing, plain and, for two or more outer folds, with the nested choice.
# Ten networks are about 18 CPU hours in fp32, more than one working session, so each finished
# one is kept in $(KEPT), committed: slim (`gliomaseg bundle` of its last.pt: fp16 weights,
# config, its patients) beside its metrics.csv. `make nested` trains only the pairs not kept
# there yet (all ten are: it trains none); KEPT=another/folder trains every pair from scratch.
OUTERS ?= $(FOLDS)
KEPT ?= results/nested
NESTED := $(RUN)-nested$(subst $(EMPTY) ,,$(foreach k,$(OUTERS),-$(k)))
# The pairs that leave out fold $(1), named lower fold first: 0-1 0-2 0-3 0-4 for fold 0.
pairs_of = $(foreach j,$(filter-out $(1),$(FOLDS)),$(subst $(EMPTY) ,-,$(sort $(1) $(j))))

nested: $(NESTED)-cv/summary.json $(RUN)-members-cv/summary.json
	$(call COMPARE,$(RUN)-members-cv,$(NESTED)-cv)
	$(if $(word 2,$(OUTERS)),$(BIN)/gliomaseg compare $(RUN)-members-cv $(NESTED)-cv --variant "nested choice")

$(NESTED)-cv/summary.json: $(foreach k,$(OUTERS),$(RUN)-outer$(k).pt)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $^ $(if $(word 2,$^),$(CVPOST),$(POST)) \
		-o $(NESTED)-cv --overwrite

define outer_rule
$(RUN)-outer$(1).pt: $(foreach p,$(call pairs_of,$(1)),$(KEPT)/pair$(p).pt)
	$(BIN)/gliomaseg bundle $$^ --post configs/bundled-post.json -o $$@ --overwrite
endef
$(foreach k,$(FOLDS),$(eval $(call outer_rule,$(k))))

# `make singles DATA=...`: each kept pair network alone, on the two folds it never saw, compared
# per patient with the bundled networks (MODEL.md, "One network on fewer patients"): what a
# quarter fewer training patients cost one network, and what the outer ensembles of `make
# nested` gain over their own members. Trains nothing; about 90 s per network on 2 cores, one
# at a time.
PAIRS := $(patsubst $(KEPT)/pair%.pt,%,$(wildcard $(KEPT)/pair*.pt))

singles: $(foreach p,$(PAIRS),$(RUN)-single$(p)/summary.json) $(RUN)-members-cv/summary.json
	$(foreach p,$(PAIRS),$(call COMPARE,$(RUN)-members-cv,$(RUN)-single$(p)) &&) true

$(RUN)-single%/summary.json: $(KEPT)/pair%.pt | $(STAMP)
	$(BIN)/gliomaseg evaluate $(DATA) --cv $< $(POST) -o $(RUN)-single$* --overwrite

# No prerequisite but the split: a kept network is never retrained because a run folder is gone.
$(KEPT)/pair%.pt: | $(RUN)-splits.json
	$(MAKE) $(RUN)-pair$*/finished
	$(BIN)/gliomaseg bundle $(RUN)-pair$*/last.pt -o $@ --overwrite
	cp $(RUN)-pair$*/metrics.csv $(KEPT)/pair$*-metrics.csv

# A stamp, not last.pt: last.pt is written every epoch, so only the stamp says the run ended.
# A killed run resumes from its last.pt.
.PRECIOUS: $(RUN)-pair%/finished $(KEPT)/pair%.pt

$(RUN)-pair%/finished: | $(RUN)-splits.json
	$(BIN)/gliomaseg split $(DATA) --pair-of $(RUN)-splits.json --pair $(subst -, ,$*) \
		-o $(RUN)-pair$*-splits.json --overwrite
	if [ -f $(@D)/last.pt ]; then OMP_NUM_THREADS=1 $(BIN)/gliomaseg train --resume $(@D); \
	else OMP_NUM_THREADS=1 $(BIN)/gliomaseg train $(DATA) -o $(@D) \
		--splits $(RUN)-pair$*-splits.json --config configs/bundled.json --overwrite; fi
	touch $@

# `make -j2 wide DATA=...`: the "wider" lever (MODEL.md, "Wider networks"): 16 base filters
# instead of 8 (1.94 M parameters), for the same 30 epochs (about 2.3 times the CPU).
wide:
	$(MAKE) variant NAME=wide SET="--set model.base_filters=16"
