# Per-image rules for `make batch` (included by the top-level Makefile through a sub-make).
# One target per input image: $(OUT)/<name>/report.json, written last and atomically by `sd3d run`,
# so an image whose report is newer than the image is up to date and is skipped on a re-run.
# <name> is the image's stem, or its whole file name when two images share a stem (a.jpg, a.png):
# `scripts/batch_summary.py --plan` gives the same names `sd3d batch` uses, so no two images share
# a folder. A failure leaves $(OUT)/logs/<name>.failed (with the exit code) and no output folder;
# `make -k` keeps going with the other images. File names with spaces or '|' are not supported.
IN ?= photos
OUT ?= out
ARGS ?=
SD3D ?= sd3d
PYTHON ?= python

# "image|name" words, one per image, in the order of the plan.
PLAN := $(shell $(PYTHON) scripts/batch_summary.py --plan "$(IN)")
IMAGES := $(foreach entry,$(PLAN),$(firstword $(subst |, ,$(entry))))
name_of = $(lastword $(subst |, ,$(filter $(1)|%,$(PLAN))))
REPORTS := $(foreach img,$(IMAGES),$(OUT)/$(call name_of,$(img))/report.json)

.PHONY: all
all: $(REPORTS)

define IMAGE_RULE
$(OUT)/$(call name_of,$(1))/report.json: $(1)
	@mkdir -p "$(OUT)/logs"
	@rm -f "$(OUT)/logs/$(call name_of,$(1)).failed"
	@echo "[batch] $(1)"
	@$(SD3D) --quiet run "$(1)" -o "$(OUT)/$(call name_of,$(1))" $(ARGS) > "$(OUT)/logs/$(call name_of,$(1)).log" 2>&1; \
	  code=$$$$?; if [ $$$$code -ne 0 ]; then echo "exit $$$$code" > "$(OUT)/logs/$(call name_of,$(1)).failed"; \
	  echo "[batch] FAILED $(1) (exit $$$$code, log: $(OUT)/logs/$(call name_of,$(1)).log)"; exit $$$$code; fi
endef
$(foreach img,$(IMAGES),$(eval $(call IMAGE_RULE,$(img))))
