# The two set-up commands of a new machine (see README): `make demo` and `make test`.
# Both create .venv/ from scratch when it is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lapose-installed
# Every ROS process started from here stays on this machine and on a domain of its own.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42

.PHONY: demo test setup setup-ros bench clean-venv

setup: $(STAMP)

$(STAMP): setup.py tools/setup_ros.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools>=77.0.3,<80" wheel
	# torch is pinned: an unpinned request would pull the newest build with GBs of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	bash tools/setup_ros.sh $(VENV)
	touch $(STAMP)

setup-ros: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lapose demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider test

bench: $(STAMP)
	$(VENV)/bin/lapose bench-train --presets tiny,small --steps 3
	$(VENV)/bin/lapose bench-data
	$(VENV)/bin/lapose bench-eval
	$(VENV)/bin/lapose bench --quick

clean-venv:
	rm -rf $(VENV)
