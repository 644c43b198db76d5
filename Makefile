# hub: the two commands that matter are `make demo` and `make test`.
GO      ?= go
BIN     := bin/hub
DEMO    := demo
DEMO_ADDR ?= 127.0.0.1:8787
PKGS    := ./...
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c

NOTEBOOK_DEBS := jupyter-nbconvert python3-ipykernel python3-pandas python3-matplotlib python3-requests python3-nbformat python3-rdflib

.PHONY: build test test-short browser-deps web-deps chdb-deps hub-chdb bench-chdb web-assets screenshots bench-web notebooks notebook-deps demo bench bench-go bench-pipeline bench-cohorts bench-load bench-pull lint tidy-check fuzz clean minio

build:
	$(GO) build -o $(BIN) ./cmd/hub

# The MinIO server the S3 tests run against, built once from the Go module
# proxy (about 3 minutes) and kept in the git-ignored bin/.
minio: bin/minio

bin/minio:
	GOBIN=$(CURDIR)/bin GOFLAGS=-buildvcs=false $(GO) install github.com/minio/minio@$(MINIO_VERSION)

# go vet, then every test with the race detector, S3 tests against MinIO,
# then every notebook executed against a live server.
test: minio web-deps chdb-deps
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 $(PKGS)
	# The statistical coverage tests, without the race detector's slowdown.
	$(GO) test -count=1 -run 'Coverage$$' ./cohorts
	# ClickHouse in process (chdb) reading the lake's Iceberg tables, and
	# answering hub serve --engine clickhouse.
	CHDB_LIB_PATH=$(CHDB_LIB) $(GO) test -count=1 -tags chdb -run Chdb ./cmd/hub
	# The ClickHouse cohort engine: the parity suite against DuckDB, and the
	# cohort tests against the oracle on ClickHouse.
	CHDB_LIB_PATH=$(CHDB_LIB) HUB_TEST_ENGINE=clickhouse $(GO) test -count=1 -tags chdb -run '$(CLICKHOUSE_TESTS)' ./cohorts
	$(MAKE) notebooks

# The cohort tests that run on either engine (the others test DuckDB's own
# settings: its files, memory limit and file access).
CLICKHOUSE_TESTS = GoPanicsRecoverBesideClickHouse|ClickHouseParity|CapClickHouseDatabases|ClickHouseReadsNoFile|GroundTruth|ByCodePicksPerPatient|RateGroundTruth|CohortsSideBySide|ClassAndDeath|UntilAndNth|Studies|ReportUnknowns|Population|NotIsTheComplement|ConcurrentBudget|RepeatIsFree|EveryGoldenQuery|RateQuery|WithdrawalBeforeTheCharge

# hub with the ClickHouse engine (hub serve --engine clickhouse): run it
# with CHDB_LIB_PATH=$(CHDB_LIB).
hub-chdb: chdb-deps
	$(GO) build -tags chdb -o bin/hub-chdb ./cmd/hub

# Issue 20's sizing: ClickHouse (chdb) and DuckDB on the same Parquet of
# the bench lake (make bench-cohorts publishes it), two cohort questions.
bench-chdb: chdb-deps
	CHDB_LIB_PATH=$(CHDB_LIB) HUB_BENCH_LAKE=$(CURDIR)/.cache/bench/lake-$${BENCH_PATIENTS:-1000000}-1/datasets/bench/versions/1 \
		$(GO) test -count=1 -tags chdb -run ChdbAgainstDuckDB -v ./cmd/hub

# ClickHouse's engine as a library (libchdb.so, 570 MB) from the npm
# package chdb-go loads it from, into a git-ignored folder.
CHDB_VERSION = 26.7.3-stable.1
CHDB_LIB = $(CURDIR)/.cache/chdb/$(CHDB_VERSION)/libchdb.so
chdb-deps: $(CHDB_LIB)
$(CHDB_LIB):
	mkdir -p $(dir $@)
	cd $(dir $@) && npm pack --silent @chdb/lib-linux-x64-gnu@$(CHDB_VERSION) >/dev/null && \
	  tar xzf chdb-lib-linux-x64-gnu-$(CHDB_VERSION).tgz --strip-components=1 package/libchdb.so && \
	  rm chdb-lib-linux-x64-gnu-$(CHDB_VERSION).tgz

# Run every notebook (jupyter nbconvert --execute) against `hub serve` on a
# fresh synthetic dataset; a failing cell fails. HUB_FIGURES=DIR keeps plots.
notebooks: build
	notebooks/run.sh $(BIN)

# Debian's packages for the notebooks (as root; CI runs this).
notebook-deps:
	@if /usr/bin/python3 -c 'import pandas, matplotlib, requests, ipykernel, nbformat, rdflib' 2>/dev/null && [ -x /usr/bin/jupyter-nbconvert ]; then \
	  echo "notebook packages present"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(NOTEBOOK_DEBS) >/dev/null; \
	fi

# Debian's chromium for the web app's browser tests (as root; CI runs this).
browser-deps:
	@if command -v chromium >/dev/null; then echo "chromium present"; else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; fi

# The web app's npm packages, as web/package-lock.json pins them: axe-core
# for the browser tests, and nhsuk-frontend, whose built files the binary
# embeds from web/static/nhsuk (committed; make web-assets copies them).
web-deps:
	cd web && npm ci --no-audit --no-fund --loglevel=error

web-assets: web-deps
	cp web/node_modules/nhsuk-frontend/dist/nhsuk/nhsuk-frontend.min.css web/node_modules/nhsuk-frontend/dist/nhsuk/nhsuk-frontend.min.js web/static/nhsuk/
	cp web/node_modules/nhsuk-frontend/dist/nhsuk/assets/images/*.svg web/node_modules/nhsuk-frontend/dist/nhsuk/assets/images/favicon.ico web/static/nhsuk/assets/images/

# Issue 19: every page but a query's result, rendered on the test dataset;
# each page's 95th percentile (aim: under 100 ms).
bench-web:
	$(GO) test -run '^$$' -bench Pages -benchtime 200x ./web

# The browser tests' screenshots of the main pages, into docs/img.
screenshots: web-deps
	HUB_SCREENSHOTS=$(CURDIR)/docs/img $(GO) test -count=1 -run TestBrowser ./web

test-short:
	$(GO) test -short -count=1 $(PKGS)

# The whole job on a synthetic extract, no server needed: publish, then
# the governance workflow (a request approved by two DAC members) and a
# DP answer within the granted budget, then the audit log.
demo: build
	rm -rf $(DEMO)
	$(BIN) synth --patients 10000 --seed 1 --out $(DEMO)/extract
	@echo "demo: making a THROWAWAY pseudonymisation key, $(DEMO)/pseudonym.key; real runs keep theirs secret and stable"
	head -c 32 /dev/urandom > $(DEMO)/pseudonym.key
	$(BIN) ingest --extract $(DEMO)/extract --optouts $(DEMO)/extract/optouts.txt --state $(DEMO)/state \
		--dataset demo --lake $(DEMO)/lake --key-file $(DEMO)/pseudonym.key --quarantine $(DEMO)/quarantine.jsonl
	@echo
	$(BIN) catalog list --lake $(DEMO)/lake
	@echo
	$(BIN) catalog show --lake $(DEMO)/lake --verify demo
	@echo
	@echo "demo: users rosa (researcher), dina and dev (DAC) and ada (admin); tokens in $(DEMO)/tokens/"
	@mkdir -p $(DEMO)/tokens
	$(BIN) user add --state $(DEMO)/state --role researcher rosa > $(DEMO)/tokens/rosa
	$(BIN) user add --state $(DEMO)/state --role dac dina > $(DEMO)/tokens/dina
	$(BIN) user add --state $(DEMO)/state --role dac dev > $(DEMO)/tokens/dev
	$(BIN) user add --state $(DEMO)/state --role admin ada > $(DEMO)/tokens/ada
	@echo "demo: serving on $(DEMO_ADDR); rosa asks for data, two DAC members approve, rosa queries"
	@$(BIN) serve --lake $(DEMO)/lake --state $(DEMO)/state --addr $(DEMO_ADDR) --preload demo & pid=$$!; \
	  trap "kill $$pid 2>/dev/null" EXIT; \
	  export HUB_SERVER=http://$(DEMO_ADDR) HUB_PROJECT=t2d-audit; T=$(DEMO)/tokens; \
	  set -ex; \
	  $(BIN) request submit --wait 60s --token-file $$T/rosa --file docs/examples/request.json; \
	  ! $(BIN) dac approve --token-file $$T/rosa --reason "my own" req-1; \
	  $(BIN) dac review --token-file $$T/dina req-1; \
	  $(BIN) dac approve --token-file $$T/dina --reason "proportionate; aggregate DP output only" --epsilon 6 req-1; \
	  $(BIN) dac approve --token-file $$T/dev --reason "agreed" --conditions "publish the query files with the paper" req-1; \
	  $(BIN) query --token-file $$T/rosa --file docs/examples/t2d-by-age.json; \
	  $(BIN) query --token-file $$T/rosa --file docs/examples/t2d-by-age.json; \
	  $(BIN) budget --token-file $$T/rosa; \
	  $(BIN) audit list --token-file $$T/ada; \
	  $(BIN) audit verify --state $(DEMO)/state

# Micro-benchmarks, then ingest of 1 M patients (~20 M events) against a
# DuckDB read_csv + anti-join baseline measured in the same run.
bench: build bench-go
	$(BIN) bench --patients $${BENCH_PATIENTS:-1000000}

# ingest → deid → publish (local lake and MinIO) against a DuckDB pipeline,
# for the CSV extract and then the same patients as a FHIR bulk export.
bench-pipeline: build minio
	$(BIN) bench --pipeline --runs $${BENCH_RUNS:-2} --patients $${BENCH_PATIENTS:-1000000}
	$(BIN) bench --pipeline --format fhir --runs $${BENCH_RUNS:-2} --patients $${BENCH_PATIENTS:-1000000}

# Cohort query latency (p50/p99, 16 clients) through the service against
# the same SQL run directly by DuckDB, on 1 M patients.
bench-cohorts: build
	$(BIN) bench --cohorts --patients $${BENCH_PATIENTS:-1000000}

# Issue 17's load test on demo-sized data: 50 good clients for 60 s while
# 20 flooders send bad tokens (errors, RSS growth, state growth).
bench-load: build
	$(BIN) bench --load --clients 50 --flooders 20 --duration 60s --patients $${BENCH_PATIENTS:-20000}

# Issue 16: an export pulled from a Bulk Data server over loopback and
# streamed through ingest, against the same files from a folder.
bench-pull: build
	$(BIN) bench --pull --runs $${BENCH_RUNS:-3} --patients $${BENCH_PATIENTS:-1000000}

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./ingest

# A short run of every fuzz target.
fuzz:
	for f in FuzzParseNHSNumber FuzzCSVRecord FuzzPlainRecord FuzzFHIRLine FuzzJSONScan FuzzLoadOptOuts; do \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s ./ingest || exit 1; done

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && echo "gofmt: the files above need formatting" && exit 1)
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)
	# The files behind the chdb build tag (they build without libchdb.so).
	$(GO) vet -tags chdb ./cohorts ./cmd/hub
	$(GO) run $(STATICCHECK) -tags chdb ./cohorts ./cmd/hub

tidy-check:
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum

clean:
	rm -rf bin $(DEMO)
