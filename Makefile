# AllSource Guard — the two commands a newcomer needs are `make run` and `make test`.
GO        ?= go
BIN       := bin/allsource
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
HTTP_ADDR ?= 127.0.0.1:8080
LONG      ?=

.PHONY: run build test test-short test-race test-pkcs11 test-faults bench lint fmt vet docker cluster-up cluster-env cluster-down clean

## run: a single-node dev server (embedded storage, local KMS, auth bypass) on $(HTTP_ADDR)
run: build
	./$(BIN) server -dev -http-addr $(HTTP_ADDR)

## build: the static allsource binary
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/allsource

## test: everything CI runs — vet, gofmt, the race detector on every package, the pkcs11 build
test: lint
	$(GO) test -race -count=1 -timeout 30m ./...
	@if [ -e /usr/lib/softhsm/libsofthsm2.so ]; then \
		$(GO) test -tags pkcs11 -count=1 -timeout 10m ./kms/... ; \
	else echo "pkcs11: SoftHSM2 not installed (scripts/ci-kms-deps.sh installs it); pkcs11 backend not tested"; \
		if [ -n "$$CI" ]; then exit 1; fi; fi

## test-short: the fast tier (no multi-process or fault tests)
test-short:
	$(GO) test -short -count=1 ./...

## test-faults: the fault-injection suite against a 3-container cluster (Docker, root for nsenter);
## LONG=1 runs every scenario longer, plus the 10-minute loaded leader-stability run, and prints the
## summary table recorded in FAULTS.md
FAULTS_REPORT ?= $(CURDIR)/bin/faults-report.md
test-faults:
	@mkdir -p $(dir $(FAULTS_REPORT))
	LONG=$(LONG) FAULTS_REPORT=$(FAULTS_REPORT) $(GO) test -count=1 -timeout 80m -run 'Fault|Nemesis|Linearizab' -v ./test/faults/
	@echo "summary table appended to $(FAULTS_REPORT)"

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## bench: the figures BENCHMARKS.md records
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 60m ./...

## docker: a FROM scratch image of the static binaries (allsource and the sample upstream)
docker: build
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/upstream ./examples/upstream
	mkdir -p bin/docker-rootfs/data bin/docker-rootfs/tmp && chmod 1777 bin/docker-rootfs/tmp
	docker build -t allsource:latest .

## cluster-up: 3 servers in containers (docker-compose.cluster.yml); the join and operator tokens are
## generated once into $(CLUSTER_ENV) (mode 0600, git-ignored), never written in the compose file
## generated once; a secret missing from an older file is added
CLUSTER_ENV := .cluster/cluster.env
cluster-up: docker cluster-env
	docker-compose -p allsource -f docker-compose.cluster.yml up -d
	@echo "operator token: export ALLSOURCE_TOKEN=\$$(sed -n 's/^ALLSOURCE_BOOTSTRAP_TOKEN=//p' $(CLUSTER_ENV))"

cluster-env:
	@mkdir -p $(dir $(CLUSTER_ENV)) && chmod 700 $(dir $(CLUSTER_ENV)) && touch $(CLUSTER_ENV) && chmod 600 $(CLUSTER_ENV)
	@grep -q '^ALLSOURCE_JOIN_TOKEN=' $(CLUSTER_ENV) || \
		echo "ALLSOURCE_JOIN_TOKEN=$$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)" >> $(CLUSTER_ENV)
	@grep -q '^ALLSOURCE_BOOTSTRAP_TOKEN=' $(CLUSTER_ENV) || \
		echo "ALLSOURCE_BOOTSTRAP_TOKEN=$$(head -c 96 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 48)" >> $(CLUSTER_ENV)
	@grep -q '^ALLSOURCE_KMS_ROOT_KEY=' $(CLUSTER_ENV) || \
		echo "ALLSOURCE_KMS_ROOT_KEY=$$(head -c 32 /dev/urandom | base64)" >> $(CLUSTER_ENV)

## cluster-down: stop the compose cluster and delete its volumes (the tokens in $(CLUSTER_ENV) stay)
cluster-down:
	docker-compose -p allsource -f docker-compose.cluster.yml down -v

clean:
	rm -rf bin
