# edgesync build. Every tool is pinned and installed into ./bin; Debian
# packages are installed with apt-get when missing. `make help` lists targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT      := $(CURDIR)
BIN       := $(ROOT)/bin
BUILD     := $(ROOT)/.build
export GOBIN := $(BIN)
export PATH  := $(BIN):$(PATH)

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPCURL_VERSION            := v1.9.4
HELM_VERSION               := v3.22.0

# Debian packages: protoc and the gRPC Python plugin for the Python client,
# and the Python runtime libraries it runs on; mosquitto (the MQTT broker
# of the router's tests and make dev) and its clients.
APT_PACKAGES := protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf python3-grpc-tools mosquitto mosquitto-clients

K8S_PROTO := $(BUILD)/k8s-proto

# What binaries and images say they are (`--version`): the release version,
# bumped when releasing, and the commit they were built from.
VERSION ?= v0.1.0
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
VERSION_LDFLAGS := -X github.com/edgesync/edgesync/internal/version.version=$(VERSION) \
	-X github.com/edgesync/edgesync/internal/version.commit=$(COMMIT)
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- tools -------------------------------------------------------------------

.PHONY: tools
tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/grpcurl ## Install pinned tools into ./bin.

$(BIN)/buf: Makefile
	go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@touch $@
$(BIN)/protoc-gen-go: Makefile
	go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@
$(BIN)/protoc-gen-go-grpc: Makefile
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@touch $@
$(BIN)/grpcurl: Makefile
	go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	@touch $@
# Helm for the chart's tests (lint, template). Its first build takes a few
# minutes.
.PHONY: helm
helm: $(BIN)/helm ## Install the pinned helm into ./bin.
$(BIN)/helm: Makefile
	go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@touch $@

.PHONY: apt-deps
apt-deps: ## Install the Debian packages the Python client and the router (mosquitto) need (when missing).
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# A real edge node (internal/realnode, `make dev`'s edge-1): containerd and
# runc, the CNI bridge and host-local plugins, the static busybox the test
# images are made of, and ip(8) to remove the pod bridge.
REALNODE_APT_PACKAGES := containerd runc containernetworking-plugins busybox-static iproute2

.PHONY: realnode-deps
realnode-deps: ## Install the Debian packages a real edge node needs (containerd, runc, CNI plugins, busybox-static) when missing.
	@missing=$$(for p in $(REALNODE_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# --- code generation ---------------------------------------------------------

# The Kubernetes protos come from the k8s.io modules at exactly the versions
# in go.mod, copied out of the Go module cache; they are never committed.
K8S_PROTO_FILES := \
	k8s.io/api:core/v1/generated.proto \
	k8s.io/api:discovery/v1/generated.proto \
	k8s.io/apimachinery:pkg/apis/meta/v1/generated.proto \
	k8s.io/apimachinery:pkg/api/resource/generated.proto \
	k8s.io/apimachinery:pkg/runtime/generated.proto \
	k8s.io/apimachinery:pkg/runtime/schema/generated.proto \
	k8s.io/apimachinery:pkg/util/intstr/generated.proto

.PHONY: k8s-protos
k8s-protos: ## Extract the Kubernetes protos from the Go module cache.
	@rm -rf $(K8S_PROTO)
	@set -e; for entry in $(K8S_PROTO_FILES); do \
	  mod=$${entry%%:*}; file=$${entry#*:}; \
	  dir=$$(go list -m -f '{{.Dir}}' $$mod); \
	  if [ -z "$$dir" ]; then go mod download $$mod; dir=$$(go list -m -f '{{.Dir}}' $$mod); fi; \
	  mkdir -p $(K8S_PROTO)/$$mod/$$(dirname $$file); \
	  install -m 0644 $$dir/$$file $(K8S_PROTO)/$$mod/$$file; \
	done

.PHONY: generate
generate: tools k8s-protos ## Regenerate gen/ from api/.
	$(BIN)/buf format -w api
	$(BIN)/buf generate

.PHONY: check-generate
check-generate: generate ## Fail if gen/ or api/ formatting differs from what is committed.
	@if [ -n "$$(git status --porcelain -- gen api)" ]; then \
	  git status --porcelain -- gen api; git --no-pager diff --stat -- gen api; \
	  echo "generated code is stale: run 'make generate' and commit"; exit 1; fi

.PHONY: generate-python
generate-python: tools k8s-protos apt-deps ## Generate the Python client into gen-python/ (not committed).
	$(BIN)/buf generate --template buf.gen.python.yaml
	@# The Kubernetes protos have no services; their empty gRPC modules land
	@# under an importable-looking but invalid "k8s.io" folder.
	@rm -rf gen-python/k8s.io
	@find gen-python -type d -exec touch {}/__init__.py \;

# The TypeScript client: protobuf-es and Connect-ES at the versions pinned in
# internal/tsclient/package-lock.json, installed into its node_modules by
# npm (Node.js 20 or later), then the generated code and the TypeScript edge
# agent compiled with the pinned tsc. Nothing of it is committed.
TS_CLIENT := $(ROOT)/internal/tsclient

$(TS_CLIENT)/node_modules/.package-lock.json: $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --ignore-scripts

.PHONY: generate-ts
generate-ts: tools k8s-protos $(TS_CLIENT)/node_modules/.package-lock.json ## Generate the TypeScript client into internal/tsclient/gen and build its edge agent (not committed).
	$(BIN)/buf generate --template buf.gen.ts.yaml
	cd $(TS_CLIENT) && node_modules/.bin/tsc -p .

# --- checks ------------------------------------------------------------------

# api/ stays wire- and JSON-compatible (buf breaking, WIRE_JSON) with the
# API of BUF_BREAKING_AGAINST, a git ref: main, or origin/main in a clone
# without a local main. Its committed protos are extracted beside the same
# Kubernetes protos and compared; a new field or message passes, a changed
# number, type or name fails.
BUF_BREAKING_AGAINST ?= $(shell git rev-parse -q --verify main >/dev/null 2>&1 && echo main || echo origin/main)
BREAKING_DIR := $(BUILD)/buf-breaking

.PHONY: breaking
breaking: tools k8s-protos ## buf breaking: api/ against BUF_BREAKING_AGAINST (default main).
	@git rev-parse -q --verify '$(BUF_BREAKING_AGAINST)^{commit}' >/dev/null || { \
	  echo "buf breaking: no git ref '$(BUF_BREAKING_AGAINST)' to compare api/ with; fetch main or set BUF_BREAKING_AGAINST=<ref>"; exit 1; }
	@rm -rf $(BREAKING_DIR) && mkdir -p $(BREAKING_DIR)/.build
	@git archive '$(BUF_BREAKING_AGAINST)' api buf.yaml | tar -x -C $(BREAKING_DIR)
	@cp -r $(K8S_PROTO) $(BREAKING_DIR)/.build/
	$(BIN)/buf breaking --against $(BREAKING_DIR)

.PHONY: lint
lint: tools k8s-protos breaking ## go vet, gofmt, buf lint, buf format, buf breaking.
	go vet ./...
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); \
	  if [ -n "$$bad" ]; then echo "gofmt would change:"; echo "$$bad"; exit 1; fi
	$(BIN)/buf lint
	$(BIN)/buf format -d --exit-code api

# --- build -------------------------------------------------------------------

.PHONY: build
build: ## Build the edgesync binaries into ./bin.
	go build -ldflags "$(VERSION_LDFLAGS)" -o $(BIN)/ ./cmd/...

# Release binaries: static (no cgo), stripped, without local paths, for the
# CPUs edge devices have (Raspberry Pi and Jetson are arm64 or armv7) and
# the server's. Named NAME-OS-ARCH[VARIANT] with SHA256SUMS next to them;
# internal/release names and checks them, the images are made from them.
RELEASE := $(BUILD)/release
RELEASE_AGENT_PLATFORMS  := linux/amd64 linux/arm64 linux/arm/v7
RELEASE_SERVER_PLATFORMS := linux/amd64 linux/arm64

.PHONY: release
release: ## Cross-build the agent (amd64, arm64, armv7) and server (amd64, arm64) with checksums into .build/release.
	@mkdir -p $(RELEASE) && rm -f $(RELEASE)/edgesync-* $(RELEASE)/SHA256SUMS
	@set -e; for spec in $(foreach p,$(RELEASE_AGENT_PLATFORMS),edgesync-agent:$(p)) \
	    $(foreach p,$(RELEASE_SERVER_PLATFORMS),edgesync-server:$(p)); do \
	  name=$${spec%%:*}; platform=$${spec#*:}; IFS=/ read -r os arch variant <<<"$$platform"; \
	  out=$(RELEASE)/$$name-$$os-$$arch$$variant; echo "  $$out"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$${variant#v} go build -trimpath \
	    -ldflags "-s -w $(VERSION_LDFLAGS)" -o $$out ./cmd/$$name; \
	done
	@cd $(RELEASE) && sha256sum edgesync-* > SHA256SUMS && echo "$(RELEASE)/SHA256SUMS"
	@echo "$(VERSION)" > $(RELEASE)/VERSION

# The chart's values.yaml ends with config:, every server setting with its
# default; this rewrites it from the server after a setting is added.
CHART := $(ROOT)/deploy/charts/edgesync

.PHONY: chart-config
chart-config: build ## Copy `edgesync-server --print-default-config` into the chart's values (config:).
	@{ sed '/^config:$$/,$$d' $(CHART)/values.yaml; echo 'config:'; \
	  $(BIN)/edgesync-server --print-default-config | sed 's/^/  /'; } > $(CHART)/values.yaml.new
	@mv $(CHART)/values.yaml.new $(CHART)/values.yaml && git --no-pager diff --stat -- $(CHART)/values.yaml

.PHONY: image
image: release ## Build the server and agent images (OCI, linux/amd64+arm64, no Docker) into .build/images.
	go run ./internal/release/mkimage --root $(ROOT) --version $(VERSION) --commit $(COMMIT)

# The devcluster is its own Go module so the main module never depends on
# k8s.io/kubernetes. The first build takes ~10 minutes on 2 cores.
# count_packages NAME: show `go build -v` as a running count of compiled
# packages (progress for long cold builds); other output (errors) passes.
count_packages = awk -v name=$(1) '/^[^ ]+$$/ && !/^\#/ {n++; if (n % 25 == 0) {printf "  %s: %d packages compiled\n", name, n; fflush()} next} {print} END {if (n) printf "  %s: %d packages compiled, done\n", name, n}'

.PHONY: devcluster
devcluster: ## Build the real control plane (etcd, kube-apiserver, controller-manager, scheduler) and kubectl.
	@echo "building tools/devcluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (~15 min on a cold build cache)"
	@set -o pipefail; cd tools/devcluster && \
	  go build -v -o $(BIN)/devcluster . 2>&1 | $(call count_packages,devcluster) && \
	  go build -v -o $(BIN)/kubectl ./cmd/kubectl 2>&1 | $(call count_packages,kubectl)

# The stock kubelet of a real edge node, from the devcluster's module at its
# pinned k8s.io/kubernetes version, stamped with that version (what the Node
# reports). About 4 min more on a cold build cache once the devcluster is
# built (most packages are shared with it), seconds on a warm one.
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" {print $$2}' tools/devcluster/go.mod)
KUBE_VERSION_PARTS := $(subst ., ,$(patsubst v%,%,$(KUBE_VERSION)))
KUBELET_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=$(word 1,$(KUBE_VERSION_PARTS)) \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(KUBE_VERSION_PARTS)) \
	-X k8s.io/component-base/version.gitTreeState=clean \
	-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z

.PHONY: kubelet
kubelet: ## Build the stock kubelet (k8s.io/kubernetes at the devcluster's version) into ./bin.
	@set -o pipefail; cd tools/devcluster && \
	  go build -v -ldflags "$(KUBELET_LDFLAGS)" -o $(BIN)/kubelet ./cmd/kubelet 2>&1 | $(call count_packages,kubelet)

# --- run and test ------------------------------------------------------------

.PHONY: test
# The tests shorten the node lifecycle: an edge that stops heartbeating turns
# Ready=Unknown after 30 s (Kubernetes: 50 s) and pods without tolerations of
# their own would be evicted 30 s later (Kubernetes: 300 s).
TEST_CLUSTER_FLAGS := --node-monitor-grace-period=30s --node-monitor-period=2s \
	--default-unreachable-toleration-seconds=30 --default-not-ready-toleration-seconds=30

test: tools lint check-generate build image helm devcluster kubelet apt-deps realnode-deps generate-python generate-ts ## Run every test against a real apiserver.
	$(BIN)/devcluster exec --dir $(ROOT)/.tmp/test-cluster $(TEST_CLUSTER_FLAGS) -- \
	  env EDGESYNC_REQUIRE_DEVCLUSTER=1 go test $(GO_TEST_FLAGS) ./...

# Every parser of bytes from outside, fuzzed (Go native fuzzing). `make test`
# runs their seed corpora (the f.Add seeds and testdata/fuzz) as ordinary
# tests; `make fuzz` explores each for FUZZTIME. A crash is written to the
# package's testdata/fuzz/<target>: fix it and keep the file.
FUZZTIME ?= 5m
FUZZ_TARGETS := \
	FuzzSyncRequest:./server \
	FuzzCodec:./server/frame \
	FuzzParseCA:./server/pki \
	FuzzParseNodeCSR:./server/pki \
	FuzzIssueCertificate:./server/bootstrap \
	FuzzRenewCertificate:./server/bootstrap \
	FuzzCheckRegistration:./controllers/nodestatus \
	FuzzSyncResponse:./edgeclient \
	FuzzLoadConfig:./cmd/edgesync-server

.PHONY: fuzz
fuzz: ## Fuzz every parser of outside bytes for FUZZTIME each (default 5m).
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== $${t%%:*} ($${t#*:}) for $(FUZZTIME)"; \
	  go test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) $${t#*:}; \
	done

.PHONY: dev
dev: tools build devcluster kubelet apt-deps ## Run the whole product end to end until Ctrl-C (edge-1 a real node where containerd can start).
	@$(MAKE) --no-print-directory realnode-deps || echo "make dev: could not install the Debian packages of a real node; edge-1 runs simulated"
	go build -o $(BIN)/edgesync-devnode ./internal/realnode/devnode
	@hack/dev.sh

# --- benchmarks --------------------------------------------------------------

BENCH_OUT ?= $(ROOT)/.tmp/bench

.PHONY: bench
bench: devcluster tools build kubelet realnode-deps apt-deps ## Run the ten performance scenarios at reduced scale (< 14 min) and a real edge node's (~3 min), and print goal vs measured.
	go build -o $(BUILD)/edgesync-bench ./cmd/edgesync-bench
	$(BUILD)/edgesync-bench run --scale reduced --out $(BENCH_OUT)
	$(MAKE) --no-print-directory bench-realnode

# A real edge node (containerd, the kubelet, edgesync-agent --runtime
# kubelet) beside a simulated one: the agent's CPU and RSS idle with 10
# pods and during a rollout, and create -> Running p50/p99 on each runtime
# (internal/e2e/realnode_bench_test.go, build tag realnodebench).
.PHONY: bench-realnode
bench-realnode: devcluster tools build kubelet realnode-deps ## Measure a real edge node's agent beside its kubelet, and pod start on the real and simulated runtimes.
	set -o pipefail; $(BIN)/devcluster exec --dir $(ROOT)/.tmp/bench-realnode $(TEST_CLUSTER_FLAGS) -- \
	  env EDGESYNC_REQUIRE_DEVCLUSTER=1 EDGESYNC_BENCH_OUT=$(BENCH_OUT) \
	  go test -tags realnodebench -count=1 -run '^TestRealNodeBenchmark$$' -v -timeout 20m ./internal/e2e/ | grep -v '^=== RUN'

.PHONY: bench-full
bench-full: devcluster apt-deps ## Run the ten performance scenarios at the goals' scales (100,000 sessions on one replica, 10,000 nodes through the apiserver; < 60 min, progress on stderr).
	go build -o $(BUILD)/edgesync-bench ./cmd/edgesync-bench
	$(BUILD)/edgesync-bench run --scale full --out $(BENCH_OUT)-full
