# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
# CPU build by default (an unpinned torch pulls several GB of CUDA packages); override for GPU hosts.
TORCH_SPEC ?= torch==2.13.0
PEERS := dcmtk orthanc orthanc-dicomweb dicom3tools chromium chromium-driver systemd npm
STAMP := $(VENV)/.installed

.PHONY: demo test lint peers venv bench clean ohif

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/constraints.txt
	$(VENV)/bin/python -m pip install -q -c $(VENV)/constraints.txt -e ".[test]"
	touch $@

# The real peers from Debian: dcmtk storescu/echoscu/dsrdump, Orthanc and its DICOMweb plugin, dciodvfy, and headless
# Chromium + ChromeDriver for the browser tests (status page, OHIF), systemd-analyze for the unit file, npm to fetch
# the OHIF viewer.
peers:
	@missing=""; \
	for t in storescu:dcmtk Orthanc:orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb dciodvfy:dicom3tools chromium:chromium chromedriver:chromium-driver systemd-analyze:systemd npm:npm; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${t%%:*} ] || [ -e $${t%%:*} ] || missing="$$missing $${t##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages:$$missing (run as root: apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

# The OHIF Viewer (npm @ohif/app, pinned with its integrity hash in testbed/ohif.py) unpacked into the git-ignored
# .cache/ohif/VERSION/dist; a no-op once fetched. The demo serves it, the viewer test drives it.
ohif: $(STAMP) peers
	$(VENV)/bin/python -m testbed.ohif fetch >/dev/null

demo: $(STAMP) peers ohif
	$(VENV)/bin/dicom-node demo

# ruff and mypy, configured in pyproject.toml; `make test` (what .ci/run calls) runs them first
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) peers ohif lint
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP) peers
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/e2e.py
	$(VENV)/bin/python bench/analyze_speed.py
	$(VENV)/bin/python bench/ray_throughput.py

clean:
	rm -rf $(VENV) var build *.egg-info .cache/ohif
