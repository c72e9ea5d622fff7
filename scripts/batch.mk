# Per-image rules for `make batch` (included by the top-level Makefile through a sub-make).
# One target per input image: $(OUT)/<name>/report.json, written last and atomically by `sd3d run`,
# so an image whose report is newer than the image is up to date and is skipped on a re-run.
# A failure leaves $(OUT)/logs/<name>.failed (with the exit code) and no output folder; `make -k`
# keeps going with the other images. File names with spaces are not supported by make.
IN ?= photos
OUT ?= out
ARGS ?=
SD3D ?= sd3d

IMAGES := $(sort $(wildcard $(IN)/*.jpg $(IN)/*.jpeg $(IN)/*.png $(IN)/*.webp \
                            $(IN)/*.JPG $(IN)/*.JPEG $(IN)/*.PNG $(IN)/*.WEBP))
name_of = $(basename $(notdir $(1)))
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
