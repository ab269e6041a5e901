# The seed's commands, on Pulumi. STACK defaults to dev; prod targets name their stack.
# State lives in ./.pulumi (a file backend, no Pulumi account) unless PULUMI_BACKEND_URL says otherwise.
# Secrets in a file backend are encrypted with a passphrase: export PULUMI_CONFIG_PASSPHRASE(_FILE) first.

PYTHON ?= python3
VENV   ?= .venv
PY     ?= $(VENV)/bin/python
PULUMI ?= pulumi
STACK  ?= dev
PROD   ?= prod
# The production policy pack (policy/): the seed's lessons, checked by the CLI before it changes anything.
POLICY_PACK ?= --policy-pack policy
export PULUMI_BACKEND_URL ?= file://$(CURDIR)/.pulumi

# `pulumi stack output` of a stack, e.g. $(call output,containerName,prod)
output = $$($(PULUMI) stack output $(1) --stack $(2))

.PHONY: venv lint format test faults bench init preview up down prod prod-stop rollback prune-images verify health status-prod logs-prod

# A stamp, not .venv/bin/python: that is a symlink, and make would touch the interpreter it points to.
INSTALLED := $(VENV)/.installed

$(INSTALLED): requirements.txt requirements-dev.txt app/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(INSTALLED) ## create .venv with everything the program and the tests need

# What `make lint` checks: the service, the program, the policy pack, the tests, the fault campaign, the benchmarks
# and the scripts.
LINT_PATHS := app components policy tests faults bench scripts __main__.py

# mypy reads bench/'s imports too (saq), so lint installs bench's pins like `make bench` does. Every tool runs even
# when an earlier one fails, so one run shows all there is to fix; the target fails if any of them did.
lint: $(INSTALLED) ## ruff (lint and format check) and mypy over LINT_PATHS; CI runs it before the tests
	$(PY) -m pip install --quiet -r bench/requirements.txt
	@status=0; \
	$(PY) -m ruff check $(LINT_PATHS) || status=1; \
	$(PY) -m ruff format --check $(LINT_PATHS) || status=1; \
	$(PY) -m mypy $(LINT_PATHS) || status=1; \
	exit $$status

format: $(INSTALLED) ## apply ruff's formatting and its safe fixes to LINT_PATHS (then `make lint` for what is left)
	$(PY) -m ruff format $(LINT_PATHS)
	$(PY) -m ruff check --fix $(LINT_PATHS)

test: $(INSTALLED) ## run every test (Pulumi mocks, the API against real Redis, the container on a real Docker engine)
	$(PY) -m pytest tests

faults: $(INSTALLED) ## the fault campaign (kill -9 under load, Valkey outage, Novita faults, 3 replicas) -> docs/reliability.md
	$(PY) -m faults

bench: $(INSTALLED) ## the benchmarks (needs Debian's wrk) -> docs/performance.md; `$(PY) -m bench --quick` for a smoke run
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) -m bench

init: ## create STACK in the backend if it does not exist (then set its secrets, see README)
	$(PULUMI) stack select --create $(STACK)

preview: $(INSTALLED) ## show what `up` would change on STACK, with the policy pack (it judges production stacks)
	$(PULUMI) preview --stack $(STACK) $(POLICY_PACK)

up: $(INSTALLED) ## deploy the dev stack (local Valkey container, needs Docker only); NOVITA_API_KEY=... sets its secret
	$(PULUMI) stack select --create dev
	@if [ -n "$$NOVITA_API_KEY" ]; then \
		printf '%s' "$$NOVITA_API_KEY" | $(PULUMI) config set --stack dev --secret novitaApiKey; fi
	$(PULUMI) up --stack dev --yes

down: ## destroy the dev stack
	$(PULUMI) destroy --stack dev --yes

prod: $(INSTALLED) ## deploy prod (Aiven for Valkey) with the policy pack; shows the plan and asks before changing anything
	$(PULUMI) up --stack $(PROD) $(POLICY_PACK)

# The containers of a stack on this Docker host, selected by the labels the program puts on each of them.
stack_containers = docker ps $(2) --filter label=novita-gpu-api.stack=$(1) --format '{{.Names}}'

prod-stop: ## stop the prod API replicas and proxy on this host; the managed Valkey is untouched (`make prod` starts them again)
	docker stop $$($(call stack_containers,$(PROD)))

rollback: $(INSTALLED) ## redeploy STACK's previous build through Pulumi (asks before `up`; YES=1 does not); run it where the builds are
	$(PY) scripts/rollback.py --stack $(STACK) --apply $(if $(YES),--yes)

KEEP ?= 5
prune-images: $(INSTALLED) ## remove STACK's builds but the KEEP (5) newest and the running one
	$(PY) scripts/rollback.py --stack $(STACK) --prune --keep $(KEEP) --apply

verify: $(INSTALLED) ## the seed's checklist on every replica and the proxy of STACK, and the API through the proxy; CRASH_TEST=1 adds a real crash (root)
	$(PY) scripts/verify.py --stack $(STACK) $(if $(CRASH_TEST),--crash-test)

health: ## GET /health of STACK through the proxy: prints the body, fails when it is not 200
	curl -sS --fail-with-body $(call output,healthUrl,$(STACK)); echo

status-prod: ## state, health and restart policy of every prod container on this host (replicas, proxy)
	@docker ps --all --filter label=novita-gpu-api.stack=$(PROD) \
		--format 'table {{.Names}}\t{{.Label "novita-gpu-api.role"}}\t{{.Status}}\t{{.Image}}'
	@for name in $$($(call stack_containers,$(PROD),--all)); do \
		docker inspect --format '{{.Name}} health={{.State.Health.Status}} restart={{.HostConfig.RestartPolicy.Name}} restarts={{.RestartCount}}' "$$name"; done

logs-prod: ## follow the logs of every prod replica and the proxy on this host, each line prefixed with its container
	$(call stack_containers,$(PROD)) | xargs -r -P 0 -I{} sh -c 'docker logs --follow --tail 100 {} 2>&1 | sed "s/^/{} | /"'
