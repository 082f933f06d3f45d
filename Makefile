# AllSource Guard — the two commands a newcomer needs are `make run` and `make test`.
GO        ?= go
BIN       := bin/allsource
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
HTTP_ADDR ?= 127.0.0.1:8080
LONG      ?=

.PHONY: run build test test-short test-race test-pkcs11 test-faults bench lint fmt vet docker cluster-up cluster-down clean

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

## test-faults: the fault-injection suite; LONG=1 for the long runs
test-faults: build
	LONG=$(LONG) $(GO) test -count=1 -timeout 80m -run 'Fault|Nemesis|Linearizab' -v ./test/...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## bench: the figures BENCHMARKS.md records
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 60m ./...

## docker: a FROM scratch image of the static binary
docker: build
	docker build -t allsource:latest .

cluster-up: docker
	docker compose -f docker-compose.cluster.yml up -d

cluster-down:
	docker compose -f docker-compose.cluster.yml down -v

clean:
	rm -rf bin
