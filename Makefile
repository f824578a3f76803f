# comet-operator. Run `make help` for the targets.

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/cometop/comet-operator/cometserver/server.Version=$(VERSION)
BIN     := $(CURDIR)/bin
RUN_DIR := $(BIN)/run
FUZZTIME ?= 30s

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: fmt
fmt: ## Format the Go code.
	git ls-files -z '*.go' | xargs -0 -r gofmt -w

.PHONY: vet
vet: ## Run go vet and check formatting.
	go vet ./...
	@out=$$(git ls-files -z '*.go' | xargs -0 -r gofmt -l); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: test
test: vet ## Run every test, with the race detector (fuzz seed corpora included).
	go test -race -count=1 ./...

.PHONY: bench
bench: ## Run the Go benchmarks and print their figures.
	go test -run '^$$' -bench . -benchmem ./...

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s).
	go test -run '^$$' -fuzz '^FuzzParseRegistration$$' -fuzztime $(FUZZTIME) ./cometserver/wire
	go test -run '^$$' -fuzz '^FuzzPayload$$' -fuzztime $(FUZZTIME) ./cometserver/wire
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./cometserver/admin

.PHONY: build
build: ## Build bin/cometserver.
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/cometserver ./cometserver/cmd/cometserver

.PHONY: run-cometserver
run-cometserver: build ## Run the comet server on its embedded defaults (admin socket under bin/run).
	@mkdir -p $(RUN_DIR)
	$(BIN)/cometserver serve --log-format text --admin-socket $(RUN_DIR)/admin.sock
