# One command to run the chat (make up), one to test it (make test);
# everything else they need is done here.
#
# With a Docker engine, up/down/scale/logs/ps drive compose.yaml; without one,
# the same topology runs as local processes through chat-cluster.  Force
# either way with DOCKER=yes or DOCKER=no.

N ?= 3
PORT ?= 8080
REDIS_URL ?=
# The Redis make up starts: single (one server with AOF), sentinel (a master,
# a replica, 3 sentinels) or cluster (3 masters + 3 replicas).
REDIS ?= single
# The backplane: socketio, or pubsub, the only one that runs on a Redis
# Cluster (python-socketio's manager has no Cluster support), hence the
# default with REDIS=cluster or a redis+cluster:// REDIS_URL; an explicit
# MODE=socketio there is refused by the replicas, in one line.
MODE ?= $(if $(filter cluster,$(REDIS))$(findstring +cluster://,$(REDIS_URL)),pubsub,socketio)
PYTHON ?= python3
PYTEST_ARGS ?=
CHAOS_ARGS ?=
BENCH_ARGS ?=
# Where make bench writes (untracked); BENCH_OUT=docs/benchmarks.json
# refreshes the figures the docs show.
BENCH_OUT ?= bench/results/benchmarks.json
RUN_PORT ?= 8000
R ?=

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUNDLE := web/vendor/socket.io.min.js
# The Socket.IO Admin UI (npm @socket.io/admin-ui, pinned), served by NGINX at
# /admin/; its links to web fonts and icons are dropped so it needs no internet.
ADMIN_UI := web/admin/index.html
NODE_STAMP := node_modules/.package-lock.json
DOCKER ?= $(shell docker info >/dev/null 2>&1 && echo yes || echo no)
COMPOSE_URL_single := redis://redis:6379/0
COMPOSE_URL_sentinel := redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/0/chat
COMPOSE_URL_cluster := redis+cluster://redis-node-1:6379,redis-node-2:6379,redis-node-3:6379
COMPOSE := REDIS_MODE=$(MODE) REPLICAS=$(N) CHAT_PORT=$(PORT) \
	CHAT_REDIS_URL=$(or $(REDIS_URL),$(COMPOSE_URL_$(REDIS))) docker compose --profile $(REDIS)
# down, ps and logs see every profile, whichever REDIS the cluster was started with.
COMPOSE_ALL := $(COMPOSE) --profile single --profile sentinel --profile cluster
CLUSTER := $(BIN)/chat-cluster

.PHONY: install run up down scale ps logs monitor test test-fast lint screenshot bench bench-chart chaos clean \
	mutation mutation-patches

install: $(STAMP) $(BUNDLE) $(ADMIN_UI)

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or newer"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "python venv failed: install python3-venv"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js and npm (Debian/Ubuntu: apt-get install npm)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(BUNDLE): $(NODE_STAMP)
	mkdir -p web/vendor
	cp node_modules/socket.io-client/dist/socket.io.min.js $@

$(ADMIN_UI): $(NODE_STAMP)
	rm -rf web/admin
	cp -r node_modules/@socket.io/admin-ui/ui/dist web/admin
	sed -i -E 's#<link [^>]*(fonts\.googleapis\.com|cdn\.jsdelivr\.net)[^>]*>##g' $@

# One replica in the foreground, in-memory (set REDIS_URL to use Redis).
run: install
	REDIS_URL=$(REDIS_URL) $(BIN)/python -m chat --port $(RUN_PORT)

ifeq ($(DOCKER),yes)
up:
	$(COMPOSE) up -d --build --wait --scale server=$(N)
	@echo "chat is up at http://localhost:$(PORT)/ ($(N) replicas, mode $(MODE))"
	@$(COMPOSE) ps
down:
	$(COMPOSE_ALL) down --remove-orphans
scale:
	$(COMPOSE) up -d --wait --no-recreate --scale server=$(N)
	$(COMPOSE) exec nginx nginx -s reload
	@$(COMPOSE) ps
ps:
	$(COMPOSE_ALL) ps
	@for s in $$($(COMPOSE_ALL) ps --services --status running | grep -E '^(redis|sentinel)'); do \
	  case $$s in sentinel*) p=26379;; *) p=6379;; esac; \
	  echo "  $$s: $$($(COMPOSE_ALL) exec -T $$s redis-cli -p $$p role | head -n 1)"; \
	done
logs:
	$(COMPOSE_ALL) logs -f $(R)
monitor:
	$(COMPOSE) exec redis redis-cli monitor
else
up: install
	$(CLUSTER) up --replicas $(N) --mode $(MODE) --port $(PORT) --redis $(REDIS) $(if $(REDIS_URL),--redis-url $(REDIS_URL))
down:
	@if [ -x $(CLUSTER) ]; then $(CLUSTER) down; else echo "chat is down"; fi
scale: install
	$(CLUSTER) scale $(N)
ps: install
	$(CLUSTER) ps
logs: install
	$(CLUSTER) logs -f $(R)
monitor: install
	$(CLUSTER) monitor
endif

# The whole suite: real Redis, NGINX, replicas and Chromium.
test: install
	$(BIN)/ruff check chat tests
	$(BIN)/pytest $(PYTEST_ARGS)

# Mutation testing (not part of make test; ~45 min on two cores).  cosmic-ray
# mutates chat/ in place, one mutant at a time, and runs each module's
# targeted tests (tests/mutation/MODULE.toml); sessions and reports land in
# .mutation/.  Do not edit chat/ or run tests in this tree meanwhile.
MUTATION_MODULES ?= delivery history cursor backplane protocol
mutation: install
	@mkdir -p .mutation
	@git diff --quiet -- chat || { echo "chat/ has uncommitted changes: commit or stash them first"; exit 1; }
	@for m in $(MUTATION_MODULES); do \
	  cfg=tests/mutation/$$m.toml; db=.mutation/$$m.sqlite; \
	  $(BIN)/cosmic-ray init $$cfg $$db && \
	  $(BIN)/cr-filter-operators $$db $$cfg && \
	  $(BIN)/python tests/mutation/sample.py $$cfg $$db && \
	  $(BIN)/cosmic-ray exec $$cfg $$db && \
	  $(BIN)/cr-report --surviving-only --show-diff $$db > .mutation/$$m.txt; \
	  tail -n 3 .mutation/$$m.txt; \
	done
	@git diff --quiet -- chat || { echo "chat/ was left mutated"; exit 1; }

# The breakages of docs/mutations/*.patch, each against the tests that catch it.
mutation-patches: install
	$(BIN)/python tests/mutation_patches.py

# Without the slow groups (cluster, browser, failures).
test-fast: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check chat tests

screenshot: install
	SCREENSHOT_OUT=docs/screenshot.png $(BIN)/pytest -q tests/test_browser.py -k screenshot

# The benchmark sweep behind docs/benchmarks.md (several minutes; run it on
# a quiet machine), and the chart drawn from its results.  The sweep also
# measures Node's socket.io (bench/node), the speed issue's comparison point.
NODE_REFERENCE := bench/node/node_modules/.package-lock.json

bench: install $(NODE_REFERENCE)
	$(BIN)/python -m chat.tools.sweep --out $(BENCH_OUT) $(BENCH_ARGS)
	$(MAKE) bench-chart

$(NODE_REFERENCE): bench/node/package.json bench/node/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js and npm"; exit 1; }
	npm ci --prefix bench/node --no-audit --no-fund

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	@touch $@

bench-chart: install $(BENCH_STAMP)
	$(BIN)/python -m chat.tools.sweep --out $(BENCH_OUT) --chart $(basename $(BENCH_OUT)).png \
		--baseline docs/benchmarks-baseline.json

# Steady load through NGINX while Redis and then a replica are killed; prints
# sent / delivered / lost / duplicated per phase (docs/reliability.md).
chaos: install
	$(BIN)/python -m chat.tools.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) node_modules bench/node/node_modules web/vendor web/admin .run test-artifacts .pytest_cache
