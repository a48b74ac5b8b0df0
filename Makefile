# Orthweb: one entry point for users, developers and CI.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

PIPENV_VERSION := 2024.4.1
export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_YES := 1
export PIPENV_NOSPIN := 1
export PIPENV_VERBOSITY := -1
# pipenv keeps to the project's .venv even when make runs inside another activated virtualenv.
export PIPENV_IGNORE_VIRTUALENVS := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CHECKPOINT_DISABLE := 1
PY := .venv/bin/python
# The Python that creates build/bootstrap-venv, where pipenv itself lives (never in the system Python:
# PEP 668 "externally-managed-environment"). On Debian/Ubuntu it needs the python3-venv package.
PYTHON ?= python3
# The project's .venv is made with the same interpreter: Pipfile.lock was locked on 3.11 (Debian 12's python3)
# and its packages install on Debian 13's 3.13 too, where pipenv (which takes no version range) would
# otherwise look for a 3.11 that is not there. pipenv then warns that the Pipfile asks for 3.11.
export PIPENV_PYTHON ?= $(PYTHON)
BOOTSTRAP_VENV := build/bootstrap-venv
PIPENV := $(BOOTSTRAP_VENV)/bin/python -m pipenv
# Extra flags for the cdktf CLI targets. tools/ops/terraform.py adds --skip-provider-lock (diff, deploy,
# destroy, output) and the offline Terraform CLI configuration when the provider comes from a filesystem mirror.
CDKTF_FLAGS ?=
CDKTF := $(PY) -m tools.ops.terraform cdktf
# Parallel pytest workers for `make test` (independent slow modules side by side; see docs/benchmarks.md).
PYTEST_WORKERS ?= 6
# Debian packages the test suite drives for real: cloud-init schema, shellcheck, nginx -t, compose
# config, and the bootstrap against the emulator (awscli v2, PostgreSQL with TLS, openssl).
# PostgreSQL is the distribution's: 15 on Debian 12 (bookworm, pinned by name as before), the
# `postgresql` metapackage elsewhere (17 on Debian 13); tools/harness/localpg.py finds its server.
# `docker-compose` is Compose v1 on Debian 12 and v2 (the same command) on Debian 13.
# The host's program runs on the system python3 with its cryptography (as on Amazon Linux); systemd-nspawn
# and mmdebstrap boot a host under real systemd (tests/test_systemd_boot.py); iptables and iproute2 prove
# the containers' egress rules in network namespaces (tests/test_egress.py); headless Chromium opens
# the local site's start page as a person would (tests/test_e2e_users.py).
DEBIAN_CODENAME := $(shell . /etc/os-release 2>/dev/null && echo "$${VERSION_CODENAME:-}")
POSTGRESQL_PACKAGE := $(if $(filter bookworm,$(DEBIAN_CODENAME)),postgresql-15,postgresql)
APT_PACKAGES := cloud-init shellcheck nginx libnginx-mod-stream docker-compose awscli $(POSTGRESQL_PACKAGE) openssl \
	orthanc orthanc-postgresql orthanc-python orthanc-dicomweb python3-boto3 python3-cryptography dcmtk graphviz haproxy \
	systemd-container mmdebstrap iptables iproute2 chromium

.PHONY: test-deps systemd-root security-deps bench check compile cost cost-docs diagram state-bucket validate db-tunnel user modality-cert recover local-up local-down security rehearsal synth test setup setup-operator setup-dev system-deps lint typecheck \
	pytest pytest-unit cli cli-synth diff deploy destroy output snapshot clean

## synth: install runtime dependencies and synthesize cdktf.out/stacks/<name> (no AWS account needed)
synth: setup
	$(PY) main.py

## test: install everything the suite needs, then lint, type-check and run every test
test: test-deps
	$(MAKE) --no-print-directory -j3 -Otarget compile lint typecheck
	$(MAKE) --no-print-directory pytest

# The installs are independent (pipenv, npm, apt then the systemd host's root, checkov's own virtualenv): side by side.
test-deps:
	$(MAKE) --no-print-directory -j4 setup-dev cli systemd-root security-deps

# The Debian root the systemd lane boots (mmdebstrap, about 45 s; cached under build/systemd-root).
systemd-root: system-deps
	$(PYTHON) -m tools.harness.systemd_host

security-deps:
	$(PYTHON) -m tools.ci.security --install

## check: the fast lane: lint, types and the pure tests (Python dev dependencies only; no apt, npm or Terraform)
check: setup-dev lint typecheck pytest-unit

# The installs do not byte-compile (pip compiles one file after another, most of them the AWS binding's
# ~2,200 modules, few of which synth or make check import: on a fresh clone the dev sync took 83 s with
# it, 20 s without, and compileall on both cores 29 s). make test compiles
# everything on both cores beside lint and types: its parallel workers would otherwise each compile the
# same modules on first import (measured: the lazy-vs-stock binding test 158 s instead of 51 s).
compile: setup-dev
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

setup: .venv/.synced-runtime
# The operator commands (validate, user, modality-cert, recover, state-bucket, preflight, db-tunnel,
# cost): the product's packages and the [operator] category, no dev tool.
setup-operator: .venv/.synced-operator
setup-dev: .venv/.synced-dev
.PHONY: bootstrap
bootstrap: $(BOOTSTRAP_VENV)/.pipenv-$(PIPENV_VERSION)

$(BOOTSTRAP_VENV)/.pipenv-$(PIPENV_VERSION): tools/bootstrap-constraints.txt
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then
	  echo "$(PYTHON) cannot create a virtualenv (no ensurepip). On Debian/Ubuntu: sudo apt-get install python3-venv" >&2
	  exit 1
	fi
	rm -rf $(BOOTSTRAP_VENV)
	$(PYTHON) -m venv $(BOOTSTRAP_VENV)
	$(BOOTSTRAP_VENV)/bin/python -m pip install -q -c tools/bootstrap-constraints.txt "pipenv==$(PIPENV_VERSION)"
	touch $@

.venv/.synced-runtime: Pipfile.lock | bootstrap
	PIP_COMPILE=0 $(PIPENV) sync
	touch $@

.venv/.synced-operator: Pipfile.lock | bootstrap
	PIP_COMPILE=0 $(PIPENV) sync --categories="packages operator"
	touch .venv/.synced-runtime $@

.venv/.synced-dev: Pipfile.lock | bootstrap
	PIP_COMPILE=0 $(PIPENV) sync --categories="packages dev-packages operator"
	touch .venv/.synced-runtime .venv/.synced-operator $@

system-deps:
	missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)
	if [ -n "$$missing" ]; then
	  echo "installing Debian packages: $$missing"
	  apt-get -o DPkg::Lock::Timeout=300 update -qq
	  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $$missing >/dev/null
	fi
	command -v terraform >/dev/null || { echo "terraform 1.11 is required on PATH (see README)"; exit 1; }

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy .

pytest:
	mkdir -p build
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --junitxml=build/junit.xml $(PYTEST_ARGS)

pytest-unit:
	$(PY) -m pytest -m unit -q $(PYTEST_ARGS)

## bench: synth (lazy vs stock binding), DICOM ingest paths, test-suite time by module (see docs/benchmarks.md)
bench: setup-dev system-deps
	$(PY) -m bench.synth
	$(PY) -m bench.ingest
	$(PY) -m bench.suite

## local-up / local-down: the whole site on this machine (no AWS; see docs/deploy.md, "Try it locally"); HOSTS=2: two hosts behind a local TCP balancer
HOSTS ?= 1
local-up: setup-dev system-deps
	$(PY) -m tools.harness.localsite up --hosts $(HOSTS)
local-down:
	$(PY) -m tools.harness.localsite down

## security: checkov (own virtualenv) + custom policies on the default and prod stacks and the plan
security: setup-dev
	$(PY) -m tools.ci.security

## user: named users with roles, e.g. ARGS="add alice --role viewer", ARGS=list, ARGS="disable alice" (SITE=local: the site of make local-up)
user: setup-operator
	$(PY) -m tools.ops.users $(if $(filter local,$(SITE)),--local) $(ARGS)

## modality-cert: DICOM client certificates, e.g. ARGS="issue CT1 --out certs/", ARGS=list, ARGS="revoke CT1" (SITE=local: the site of make local-up)
modality-cert: setup-operator
	$(PY) -m tools.ops.modalities $(if $(filter local,$(SITE)),--local) $(ARGS)

## rehearsal: deploy to the AWS API emulator with real Terraform, check, plan again, destroy (PROFILE=scaled: 3 hosts behind a load balancer)
PROFILE ?= single
rehearsal: setup-dev system-deps
	$(PY) -m tools.harness.rehearsal --profile $(PROFILE)

## validate: check the deployed site end to end, reading its outputs and secrets itself (SITE=local: the site of make local-up); ARGS=--json
SITE ?= aws
validate: setup-operator
	if [ "$(SITE)" = local ]; then $(PY) -m tools.ops.validate --local $(ARGS); else $(PY) main.py >/dev/null && $(PY) -m tools.ops.validate $(ARGS); fi

## aws-smoke: on your AWS account: deploy the default profile as orthweb-smoke, validate it (C-STORE, DICOMweb), destroy it; about one hour of the default profile's cost; ARGS="--cidr a.b.c.d/32 --keep"
aws-smoke: setup-dev cli
	$(PY) -m tools.ops.aws_smoke $(ARGS)

## db-tunnel: a Session Manager tunnel from 127.0.0.1:15432 through a host to the database, and the psql line (ARGS="--local-port N")
db-tunnel: setup-operator
	$(PY) main.py >/dev/null
	$(PY) -m tools.ops.db_tunnel $(ARGS)

## state-bucket: create once the encrypted, versioned S3 bucket and KMS key for team state (prints the two settings)
state-bucket: setup-operator
	$(PY) -m tools.ops.state_bucket $(ARGS)

## diagram: docs/diagrams/{default,prod,scaled}.dot and .svg from the synthesized stacks (graphviz renders the SVG)
diagram: setup-dev
	$(PY) -m tools.maint.diagram --docs

## cost: the monthly estimate of the stack you configured (orthweb.toml, ORTHWEB_*): each resource and the total
cost: setup-operator synth
	$(PY) -m tools.ops.cost --configured

## cost-docs: (maintenance) the reference profiles' estimates into docs/operations-tools.md and README
cost-docs: setup-dev
	$(PY) -m tools.maint.cost_docs --write docs/operations-tools.md --write README.md

## recover: restore DICOM objects deleted after a time and re-ingest them (see docs/recovery.md), RECOVER_ARGS="..."
recover: setup-operator
	$(PY) -m tools.ops.recover $(RECOVER_ARGS)

## preflight: the configured site against docs/production.md, item by item (PASS/WARN/FAIL; exit 1 on a FAIL in prod); ARGS=--account also asks your AWS account (Elastic IP quota)
.PHONY: preflight
preflight: setup-operator
	$(PY) -m tools.ops.preflight $(ARGS)

## snapshot: write (or, with SNAPSHOT_COMPARE=dir, compare) the synthesized JSON of the reference profiles
snapshot: setup
	$(PY) -m tools.maint.snapshot $(if $(SNAPSHOT_COMPARE),compare $(SNAPSHOT_COMPARE),write build/snapshot)

## cli: the pinned CDKTF CLI (npm), for synth/diff/deploy/destroy
cli: node_modules/.package-lock.json
node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

cli-synth: setup cli
	npx cdktf synth $(CDKTF_FLAGS)
diff: setup cli
	$(CDKTF) diff $(CDKTF_FLAGS)
deploy: setup cli
	$(CDKTF) deploy $(CDKTF_FLAGS)
destroy: setup cli
	$(CDKTF) destroy $(CDKTF_FLAGS)
output: setup cli
	$(CDKTF) output $(CDKTF_FLAGS)

clean:
	rm -rf cdktf.out build .pytest_cache .ruff_cache .mypy_cache
