# The two commands a newcomer needs, each installing what it uses first (as root on Debian):
#   make demo   build the lab, run the router with the seed's example, show it, tear it down
#   make test   the whole test suite: pure, fake-backed, and the root-only lab tests
# and, for the container image:
#   make image     build localhost/egress-router:<version> and :latest with podman
#   make pod-demo  the seed's Pod from that image under podman kube play, on the lab
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test typecheck bench lint clean image pod-demo

demo:
	@./scripts/setup.sh
	$(PY) -m egress_router.lab.demo

test:
	@./scripts/setup.sh
	$(PY) -m pytest $(PYTEST_ARGS)

image:
	@./scripts/image/build.sh

pod-demo: image
	@./scripts/setup.sh
	$(PY) -m egress_router.lab.pod_demo

typecheck:
	@./scripts/setup.sh
	$(VENV)/bin/mypy

bench:
	@./scripts/setup.sh
	$(PY) -m benchmarks $(BENCH_ARGS)

lint:
	@./scripts/setup.sh
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e ".[lint]"
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
