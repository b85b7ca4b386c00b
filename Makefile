# vclq — see README.md. Every target works on a fresh machine.
SHELL := /bin/bash
GO ?= go
BIN := bin/vclq
export PATH := $(shell $(GO) env GOPATH)/bin:$(PATH)

.PHONY: all build run guest-deps test test-deps tidy-check lint bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/vclq

# The main job: NATS, simulated ESX hosts, guests, workers and a demo, all embedded.
# As root it first installs what the real (namespace) guests need; without root it
# says what it would install, and the guests are simulated.
run: build guest-deps
	$(BIN) dev

guest-deps:
	bash scripts/guest-deps.sh

# Installs what the tests need (Debian packages, natscli, a running MariaDB), then
# runs every test: with the race detector, except the tests that drive concurrent VM
# creation through vcsim or create VMs under a power watch, where vcsim's own code
# races (govmomi v0.56.0 simulator: createVM's task appends to the Datastore while
# FileManager.MakeDirectory reads it under another lock, and renames the new VM
# without its lock while a property collector reads it). Those run afterwards
# without -race, with the machine to themselves; the code they exercise keeps its
# -race unit tests.
VCSIM_CONCURRENT := TestConcurrentLoadsRetrieveImageOnce|TestDevOnceRunsRequests|TestGuestIsDownWhenPowerOffReturns
test: tidy-check test-deps build
	$(GO) test -race -count=1 -timeout 20m -skip '$(VCSIM_CONCURRENT)' $$($(GO) list ./... | grep -v '/e2e$$')
	$(GO) test -count=1 -timeout 20m -run '$(VCSIM_CONCURRENT)' ./hypervisor ./cmd/vclq ./internal/devlab
	$(GO) test -count=1 -timeout 20m ./e2e

test-deps:
	bash scripts/test-deps.sh

# go.mod and go.sum as `go mod tidy` leaves them (the first, quick step of `make test`,
# which is what CI runs).
tidy-check:
	$(GO) mod tidy -diff

lint: tidy-check
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# Short fuzzing runs of the decoders (the seed corpora also run in `make test`).
fuzz:
	$(GO) test ./messages -run '^$$' -fuzz FuzzDecodeRequest -fuzztime 60s
	$(GO) test ./messages -run '^$$' -fuzz FuzzDecodeEvents -fuzztime 30s

# Measures and writes docs/BENCHMARKS.md.
bench: test-deps build
	bash scripts/bench.sh

clean:
	rm -rf bin
