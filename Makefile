# comet-operator. Run `make help` for the targets.

# The one place for the version and the image names: the chart's appVersion
# and default images must match them (the chart tests check).
VERSION    ?= 0.1.0
IMAGE_REPO ?= ghcr.io/cometop
OPERATOR_IMG    ?= $(IMAGE_REPO)/comet-operator:$(VERSION)
COMETSERVER_IMG ?= $(IMAGE_REPO)/cometserver:$(VERSION)
LDFLAGS := -X github.com/cometop/comet-operator/cometserver/server.Version=$(VERSION) -X main.version=$(VERSION)
BIN     := $(CURDIR)/bin
RUN_DIR := $(BIN)/run
FUZZTIME ?= 30s

# Tools, pinned and installed into bin/.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(BIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
KUBECTL ?= kubectl

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRD and the RBAC role from the code's markers, and copy them into the chart.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	hack/sync-chart.sh

.PHONY: generate
generate: controller-gen ## Generate the API's DeepCopy methods.
	$(CONTROLLER_GEN) object paths="./api/..."

.PHONY: fmt
fmt: ## Format the Go code.
	git ls-files -z '*.go' | xargs -0 -r gofmt -w

.PHONY: vet
vet: ## Run go vet and check formatting.
	go vet ./...
	go vet -tags e2e ./test/e2e/
	go -C hack/cometbench vet ./...
	go -C hack/images vet ./...
	@out=$$(git ls-files -z '*.go' | xargs -0 -r gofmt -l); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: docs
docs: ## Regenerate the README's table of chart values from values.yaml.
	go run ./hack/values-table -write README.md

.PHONY: test
test: manifests generate vet envtest tools chromium redis ## Run every test with the race detector: controller and chart on a real API server, comet.js in real Chromium, Redis tests on real redis-server.
	KUBEBUILDER_ASSETS="$$(hack/envtest-binaries.sh)" go test -race -count=1 ./...
	go -C hack/cometbench test -race -count=1 ./...
	go -C hack/images test -race -count=1 ./...

.PHONY: test-all
test-all: ## The whole suite: make test, then make e2e on a real local cluster (root).
	$(MAKE) test
	$(MAKE) e2e

.PHONY: bench
bench: ## Benchmark against nginx+Nchan and Pushpin (installed from Debian) and rewrite docs/benchmarks.md.
	hack/bench.sh

.PHONY: bench-go
bench-go: ## Run the Go micro-benchmarks and print their figures.
	go test -run '^$$' -bench . -benchmem ./cometserver/...

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s) and keep what it finds under testdata/fuzz.
	FUZZTIME=$(FUZZTIME) hack/fuzz.sh

.PHONY: mutation
mutation: ## Mutation testing (gremlins) of the server's packages and the operator's pure functions; fails under 90% efficacy.
	hack/mutation.sh

##@ Build and run

.PHONY: build
build: manifests generate ## Build bin/manager (the operator) and bin/cometserver.
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/manager .
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/cometserver ./cometserver/cmd/cometserver

.PHONY: run
run: manifests generate ## Run the operator against the cluster of the current kubeconfig.
	go run . --cometserver-image=$(COMETSERVER_IMG)

.PHONY: run-cometserver
run-cometserver: ## Run the comet server alone with its demo page on http://127.0.0.1:8080/ (admin socket under bin/run).
	@mkdir -p $(RUN_DIR)
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/cometserver ./cometserver/cmd/cometserver
	$(BIN)/cometserver serve --demo --log-format text --admin-socket $(RUN_DIR)/admin.sock

.PHONY: images
images: ## Build the operator and comet server image tarballs into bin/images (no Docker needed).
	go -C hack/images run . --root $(CURDIR) --version $(VERSION) --repo $(IMAGE_REPO) --out $(BIN)/images

.PHONY: helm-lint
helm-lint: tools ## Lint the chart and run its helm-unittest suites.
	$$(hack/tools.sh helm) lint --strict charts/comet-operator
	$$(hack/tools.sh helm-unittest) charts/comet-operator

.PHONY: demo
demo: images tools redis ## The main job: a local cluster from source, the operator via Helm, a sample CometServer (root).
	VERSION=$(VERSION) hack/demo.sh

.PHONY: e2e
e2e: images tools redis ## Run the end-to-end suite on a local cluster built from source (root; always torn down).
	VERSION=$(VERSION) hack/e2e.sh

.PHONY: cluster-up
cluster-up: ## Bring up the local single-node cluster (root; see hack/local-cluster).
	hack/local-cluster up

.PHONY: cluster-down
cluster-down: ## Tear the local cluster down and restore the host.
	hack/local-cluster down

.PHONY: install
install: manifests ## Install the CRD into the cluster of the current kubeconfig.
	$(KUBECTL) apply --server-side -f config/crd/bases

.PHONY: uninstall
uninstall: manifests ## Remove the CRD (and so every CometServer) from the cluster.
	$(KUBECTL) delete --ignore-not-found -f config/crd/bases

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Install controller-gen into bin/.
$(CONTROLLER_GEN):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(BIN)/controller-gen $(CONTROLLER_GEN)

.PHONY: tools
tools: ## Build helm and helm-unittest from Go module sources into bin/tools.
	hack/tools.sh helm >/dev/null
	hack/tools.sh helm-unittest >/dev/null

.PHONY: chromium
chromium: ## Install Debian's Chromium for the browser tests, if missing.
	hack/install-chromium.sh

.PHONY: redis
redis: ## Install Debian's redis-server and redis-tools for the Redis tests, if missing.
	hack/install-redis.sh

.PHONY: envtest
envtest: ## Build (once per version) the etcd and kube-apiserver that envtest runs, into bin/k8s.
	hack/envtest-binaries.sh >/dev/null
