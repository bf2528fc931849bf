# tsr-platform: every target bootstraps what it needs (venv, tools) idempotently.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := $(CURDIR)/.tools/bin
# MinIO's community edition ships as source; this pseudo-version is the commit we test against.
MINIO_VERSION ?= v0.0.0-20260212201848-7aac2a2c5b7c
# helm and kustomize for `helm lint`/`helm template` and overlay builds in the tests, built like MinIO.
HELM_VERSION ?= v3.22.0
# (kustomize v5.8.3 needs Go 1.27; the machines have 1.26)
KUSTOMIZE_VERSION ?= v5.8.1
# CRDs the tests validate rendered custom resources against (make crds): KServe's InferenceService (kserve
# v0.21.0, the Python SDK's version, is refused by the Go proxy: v0.20.0 is the closest) and prometheus-operator's.
CRDS := $(CURDIR)/.tools/crds
KSERVE_CRD_VERSION ?= v0.20.0
PROM_OPERATOR_VERSION ?= v0.93.1
# `make demo` options, e.g. `make demo DEMO_EPOCHS=4 DEMO_TRACKS=10 DEMO_BATCH=128 DEMO_MIN_ACCURACY=0.5
# DEMO_MIN_CLASS_ACCURACY=0`: each one
# set is passed to `tsr demo`; unset, the demo's own defaults apply (TrainConfig, GateConfig: one place each).
DEMO_ARGS = $(if $(DEMO_EPOCHS),--epochs $(DEMO_EPOCHS)) $(if $(DEMO_TRACKS),--max-groups-per-class $(DEMO_TRACKS)) \
  $(if $(DEMO_BATCH),--batch-size $(DEMO_BATCH)) $(if $(DEMO_MIN_ACCURACY),--min-accuracy $(DEMO_MIN_ACCURACY)) \
  $(if $(DEMO_MIN_CLASS_ACCURACY),--min-class-accuracy $(DEMO_MIN_CLASS_ACCURACY)) \
  $(if $(DEMO_DATA),--data-dir $(DEMO_DATA))
COMPONENT_IMAGE ?= ghcr.io/tsr-platform/tsr-components:0.1.0
# `make images`: multi-arch component + predictor images (docs/images.md). PYTHON_IMAGE is an exact
# tag; the target resolves it to its digest so every platform is built on the same base.
REGISTRY ?= ghcr.io/tsr-platform
TAG ?= 0.1.0
PLATFORMS ?= linux/amd64,linux/arm64
PYTHON_IMAGE ?= python:3.11.14-slim-bookworm
# `make images-local`: the same Dockerfiles built on this machine without Docker or a registry (buildah, a Debian
# stand-in base when Docker Hub is unreachable) plus a KServe storage-initializer: the native platform unless
# PLATFORMS is given on the command line (linux/arm64 is built under qemu-user emulation).
LOCAL_PLATFORMS ?= linux/amd64
ACTIONLINT_VERSION ?= v1.7.12
# `make audit`: pip-audit in a tool venv of its own (never in .venv or requirements.lock), checking requirements.lock
# against PyPI's vulnerability data (.ci/audit.py: one line and exit 2 when that cannot be reached); AUDIT_TIMEOUT bounds it.
PIP_AUDIT_VERSION ?= 2.10.1
AUDIT_VENV := $(CURDIR)/.state/tools/pip-audit
AUDIT_TIMEOUT ?= 600
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: audit images-build help venv tools cluster-tools etcd crds prometheus wrk soak fuzz monitoring manifests bench-train bench-serving demo test test-fast lint typecheck compile bench clean clean-state images images-tools images-local images-test arm64-smoke actionlint node-tools node-debs cluster-e2e cluster-up arm64-node

help:
	@echo "make demo   - run the whole platform locally (MinIO, pipeline, registry, predictor, requests)"
	@echo "make test   - the test suite (what CI runs)"
	@echo "make test-fast - the unit tier (lint + pytest -m unit, ~1-2 min): no GTSRB archive, servers or tools needed"
	@echo "make bench  - the side-by-side benchmark suite (~5-15 min; results in benchmarks/results/)"
	@echo "make bench-train - default config on all data: accuracy and training time (long)"
	@echo "make bench-serving - predictor throughput with and without batching (wrk, concurrency 32)"
	@echo "make monitoring - regenerate manifests/monitoring/ (alert rules, dashboard, monitors)"
	@echo "make manifests - regenerate manifests/ (InferenceService, kustomize base and overlays)"
	@echo "make compile- regenerate pipelines/compiled/tsr_training.yaml (and manifests/retrain/, which ships it)"
	@echo "make images - build + push tsr-components and tsr-predictor for PLATFORMS (docker buildx; REGISTRY, TAG)"
	@echo "make images-build - the same images without archives (what make test builds for its runc smoke test)"
	@echo "make images-local - build tsr-components, tsr-predictor and a storage-initializer here, daemonless (buildah; .state/images)"
	@echo "make images-test - check the images make images-local built (pytest tests/images)"
	@echo "make arm64-smoke - build both images for linux/arm64 (qemu-user) and run their code there against amd64 (tests/arm64)"
	@echo "make cluster-tools - kube-apiserver/controller-manager/scheduler/kubectl, the KServe controller, etcd (pytest -m cluster)"
	@echo "make node-tools - kubelet, containerd + ctr + runc shim, the pause and test images, runc/CNI/socat (pytest -m node)"
	@echo "make cluster-e2e - the node tier: control plane + KServe + a real node in namespaces (tests/node)"
	@echo "make arm64-node - an arm64 node (kubelet + pods under qemu-user) beside the amd64 one: the predictor placed there answers"
	@echo "make cluster-up - a control plane + KServe + a node for you: prints a kubeconfig path, Ctrl-C stops it"
	@echo "make crds   - fetch the KServe + prometheus-operator CRDs the tests validate against (.tools/crds)"
	@echo "make actionlint - lint .github/workflows with actionlint (built with go install)"
	@echo "make audit  - pip-audit requirements.lock against PyPI's vulnerability data (needs pypi.org; CI runs it)"
	@echo "make $(TOOLS)/dockerfile-check - the BuildKit Dockerfile checker (.ci/dockerfile-check; part of make tools)"
	@echo "make soak   - the locust load test for 10 minutes at 32 users, large and bad requests too: is RSS bounded? (.state/soak)"
	@echo "make fuzz   - the predictor fuzz tests with 10x the examples"

$(VENV)/.stamp: pyproject.toml requirements.lock
	@test -x $(PY) || { .ci/disk-free.sh $(CURDIR) 8 "the venv (torch and its CUDA libraries from PyPI: 6.2 GB installed)" && \
	  $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp

$(TOOLS)/minio:
	@mkdir -p $(TOOLS)
	@if command -v go >/dev/null; then \
	  echo "building MinIO $(MINIO_VERSION) with go install (first time only, a few minutes)"; \
	  GOBIN=$(TOOLS) CGO_ENABLED=0 GOFLAGS=-trimpath go install github.com/minio/minio@$(MINIO_VERSION); \
	elif command -v minio >/dev/null; then \
	  ln -sf "$$(command -v minio)" $@; \
	else \
	  echo "WARNING: neither Go nor minio found: tsr falls back to a local directory store"; \
	fi

# Prometheus + promtool (and amtool, for the retrain receiver's Alertmanager snippet) from Debian's
# packages (alert rule checks, the Prometheus integration test, the demo's scrape). Best effort here; `make test` then insists on promtool being there.
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's prometheus and prometheus-alertmanager packages (prometheus, promtool, amtool)"; \
	  $$sudo apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; } || \
	  echo "WARNING: could not install prometheus (needs root or sudo): monitoring checks will fail"; \
	else \
	  echo "WARNING: no apt-get: install prometheus + promtool yourself for the monitoring checks"; \
	fi

$(TOOLS)/helm:
	@mkdir -p $(TOOLS)
	@echo "building helm $(HELM_VERSION) with go install (first time only)"
	GOBIN=$(TOOLS) CGO_ENABLED=0 GOFLAGS=-trimpath go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(TOOLS)/kustomize:
	@mkdir -p $(TOOLS)
	@echo "building kustomize $(KUSTOMIZE_VERSION) with go install (first time only)"
	GOBIN=$(TOOLS) CGO_ENABLED=0 GOFLAGS=-trimpath go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

# The CRD YAMLs from the modules' zips (go mod download prints the module's Dir); the stamp names the versions.
$(CRDS)/.stamp-$(KSERVE_CRD_VERSION)-$(PROM_OPERATOR_VERSION):
	@mkdir -p $(CRDS)
	@echo "fetching the KServe $(KSERVE_CRD_VERSION) and prometheus-operator $(PROM_OPERATOR_VERSION) CRDs (go mod download)"
	dir() { go mod download -json "$$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'; } && \
	kserve=$$(dir github.com/kserve/kserve@$(KSERVE_CRD_VERSION)) && [ -d "$$kserve" ] && \
	prom=$$(dir github.com/prometheus-operator/prometheus-operator@$(PROM_OPERATOR_VERSION)) && [ -d "$$prom" ] && \
	install -m 644 $$kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml \
	  $$prom/example/prometheus-operator-crd/monitoring.coreos.com_{podmonitors,servicemonitors,prometheusrules,alertmanagerconfigs}.yaml $(CRDS)/
	@rm -f $(CRDS)/.stamp-* && touch $@

crds: $(CRDS)/.stamp-$(KSERVE_CRD_VERSION)-$(PROM_OPERATOR_VERSION)

tools: $(TOOLS)/minio $(TOOLS)/helm $(TOOLS)/kustomize $(TOOLS)/actionlint $(TOOLS)/dockerfile-check crds prometheus cluster-tools

demo: venv $(TOOLS)/minio prometheus
	TSR_STATE_DIR=$(CURDIR)/.state $(VENV)/bin/tsr demo $(strip $(DEMO_ARGS))

test: venv tools images-build lint typecheck
	@command -v promtool >/dev/null || { echo "promtool not found: see 'make prometheus'"; exit 1; }
	@command -v amtool >/dev/null || { echo "amtool not found: see 'make prometheus'"; exit 1; }
	$(PY) -m pytest -q

# The unit tier: tests/conftest.py marks each test `unit` or `integration` (GTSRB archive, MinIO, Prometheus,
# helm/kustomize/API server binaries, subprocesses, kfp.local runs, `slow`); this runs the former.
test-fast: venv lint
	$(PY) -m pytest -q -m unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv
	$(VENV)/bin/mypy tsr components pipelines serving benchmarks

monitoring: venv
	$(PY) -m tsr.kube.monitoring --out manifests/monitoring
	cp manifests/monitoring/tsr-rules.yaml manifests/monitoring/grafana-dashboard.json helm/tsr-platform/files/

# Regenerate manifests/inferenceservice.yaml and the kustomize base + overlays from the typed builders.
manifests: venv
	$(PY) -m tsr.local.generate

# The retrain receiver's ConfigMap (manifests/retrain/) carries the compiled pipeline, so it is rendered again too.
compile: venv
	$(PY) -m pipelines.compile --image $(COMPONENT_IMAGE)
	$(PY) -m tsr.local.generate

bench: venv $(TOOLS)/minio wrk
	TSR_STATE_DIR=$(CURDIR)/.state $(PY) -m benchmarks.suite

bench-train: venv
	TSR_STATE_DIR=$(CURDIR)/.state $(PY) -m benchmarks.train_default

# wrk (Debian's package) drives the predictor: a C load generator leaves the server most of the CPU.
wrk:
	@command -v wrk >/dev/null || { sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null; }; }

bench-serving: venv wrk
	$(PY) -m benchmarks.serving_throughput

clean-state:
	-TSR_STATE_DIR=$(CURDIR)/.state $(VENV)/bin/tsr store stop
	rm -rf .state

clean: clean-state
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache

# Multi-platform build + push of both images (needs Docker with buildx and a builder that can do
# multi-platform, e.g. `docker buildx create --use` + QEMU binfmt for the foreign arch).
images:
	@docker buildx version >/dev/null 2>&1 || { \
	  echo "make images needs 'docker buildx' (Docker Engine + the buildx plugin); none found on this machine"; exit 1; }
	@digest=$$(docker buildx imagetools inspect $(PYTHON_IMAGE) --format '{{.Manifest.Digest}}') && [ -n "$$digest" ] || { \
	  echo "could not resolve $(PYTHON_IMAGE) to a digest (registry reachable?)"; exit 1; }; \
	base="$(PYTHON_IMAGE)@$$digest"; rev=$$(git rev-parse HEAD 2>/dev/null || echo unknown); \
	echo "base image $$base, platforms $(PLATFORMS), revision $$rev"; \
	args="--build-arg PYTHON_IMAGE=$$base --build-arg VERSION=$(TAG) --build-arg REVISION=$$rev"; \
	docker buildx build --platform $(PLATFORMS) $$args -f components/Dockerfile -t $(REGISTRY)/tsr-components:$(TAG) --push . && \
	docker buildx build --platform $(PLATFORMS) $$args -f serving/Dockerfile -t $(REGISTRY)/tsr-predictor:$(TAG) --push . && \
	.ci/image-sizes.sh $(REGISTRY)/tsr-components:$(TAG) $(REGISTRY)/tsr-predictor:$(TAG)

# `make images-local` (docs/images.md): buildah with project-local storage (.state/containers), a Debian stand-in
# base when python:3.11.14-slim-bookworm cannot be pulled, PyPI's torch when the CPU index is unreachable (all
# said in the log); docker-archive tars + sizes.json in .state/images. Needs root. Debian's packages, like prometheus.
IMAGE_PACKAGES := debootstrap buildah runc skopeo curl
images-tools:
	@if command -v debootstrap >/dev/null && command -v buildah >/dev/null && command -v runc >/dev/null && \
	  command -v skopeo >/dev/null && command -v curl >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's $(IMAGE_PACKAGES) packages (make images-local)"; \
	  $$sudo apt-get install -y -qq --no-install-recommends $(IMAGE_PACKAGES) >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $(IMAGE_PACKAGES) >/dev/null; } || \
	  { echo "could not install $(IMAGE_PACKAGES) (needs root or sudo)"; exit 1; }; \
	else \
	  echo "make images-local needs $(IMAGE_PACKAGES) (no apt-get here)"; exit 1; \
	fi

# qemu-user for arm64 code here (.ci/images/foreign-arch.sh): the static qemu-aarch64 of Debian's qemu-user 10.0
# (bookworm-backports), unpacked from its package, pinned by sha256. Bookworm's qemu-user-static 7.2 runs Python
# and pip, but `import torch` segfaults under it (oneDNN's CPU detection); docs/images.md.
QEMU_DEB := qemu-user_10.0.2+ds-2+deb13u1~bpo12+1_amd64.deb
QEMU_DEB_SHA256 := 10a2dec99f2b2d0b1097ff0375aea35b89322d6631fc96700511b02e05bf6fef
$(TOOLS)/qemu-aarch64:
	@mkdir -p $(TOOLS) && tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  curl -fsS --max-time 600 -o $$tmp/qemu.deb http://deb.debian.org/debian/pool/main/q/qemu/$(QEMU_DEB) || \
	  { echo "error: could not download $(QEMU_DEB) from deb.debian.org (set TSR_QEMU_AARCH64 to a qemu-aarch64 >= 8)"; exit 1; }; \
	  echo "$(QEMU_DEB_SHA256)  $$tmp/qemu.deb" | sha256sum -c --quiet || { echo "error: $(QEMU_DEB): sha256 mismatch"; exit 1; }; \
	  dpkg-deb --fsys-tarfile $$tmp/qemu.deb | tar -x -C $$tmp ./usr/bin/qemu-aarch64 && \
	  install -m 755 $$tmp/usr/bin/qemu-aarch64 $@.part && mv $@.part $@ && $@ --version | head -1

# `make images-local PLATFORMS=linux/arm64` (or linux/amd64,linux/arm64): a PLATFORMS given on the command line wins
# over LOCAL_PLATFORMS; a foreign one is built under qemu-user (.ci/images/foreign-arch.sh), into .state/images/<arch>/.
IMAGES_LOCAL_PLATFORMS = $(if $(filter command line,$(origin PLATFORMS)),$(PLATFORMS),$(LOCAL_PLATFORMS))
images-local: images-tools $(if $(findstring arm64,$(IMAGES_LOCAL_PLATFORMS)),$(TOOLS)/qemu-aarch64)
	TAG=$(TAG) PLATFORMS=$(IMAGES_LOCAL_PLATFORMS) PYTHON_IMAGE=$(PYTHON_IMAGE) .ci/images/build.sh

# What `make test` builds (the pods tier does not fit CI's time): the same images without archives or sizes, for
# tests/serving/test_image_runc.py, which runs the predictor image once under runc. Needs root, like images-local.
images-build: images-tools
	TSR_IMAGES_ARCHIVES=0 TAG=$(TAG) PLATFORMS=$(LOCAL_PLATFORMS) PYTHON_IMAGE=$(PYTHON_IMAGE) .ci/images/build.sh

# `make arm64-smoke` (docs/images.md "arm64 here, under emulation"): both images built for linux/arm64 from the same
# Dockerfiles under qemu-user (.ci/images/build.sh, cached), then tests/arm64 runs their own code in arm64 containers
# (.ci/images/foreign-run.sh) against the same code here, and prints one JSON line. Needs root; not part of make test.
ARM64_SUMMARY := .state/arm64-smoke/arm64-smoke.json
arm64-smoke: venv images-tools $(TOOLS)/minio $(TOOLS)/qemu-aarch64
	TAG=$(TAG) PLATFORMS=linux/arm64 PYTHON_IMAGE=$(PYTHON_IMAGE) .ci/images/build.sh
	@rm -f $(ARM64_SUMMARY)
	@$(PY) -m pytest -q -m arm64 tests/arm64; status=$$?; \
	  if [ -f $(ARM64_SUMMARY) ]; then cat $(ARM64_SUMMARY); else echo '{"arm64_smoke": null}'; fi; exit $$status

# The image tier (tests/images): plain `make test` deselects it; it fails, naming images-local, without the images.
images-test: venv $(TOOLS)/minio
	$(PY) -m pytest -q tests/images

$(TOOLS)/actionlint:
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) CGO_ENABLED=0 GOFLAGS=-trimpath go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

# Dockerfile parse + lint + LLB conversion with BuildKit's own packages, no daemon (.ci/dockerfile-check).
$(TOOLS)/dockerfile-check: .ci/dockerfile-check/main.go .ci/dockerfile-check/go.mod .ci/dockerfile-check/go.sum
	@mkdir -p $(TOOLS)
	cd .ci/dockerfile-check && CGO_ENABLED=0 GOFLAGS=-trimpath go build -o $(abspath $(TOOLS))/dockerfile-check .

# ---- the cluster test tier (pytest -m cluster): a real control plane + the real KServe controller ----------
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl at the release pinned in .ci/kube/go.mod
# (a wrapper module: k8s.io/kubernetes plus one replace per staging module), built from the Go module proxy
# into .tools/bin once per pin (the stamp names it). The version ldflags make `kubectl version` work.
KUBE_VERSION := $(shell awk '$$1 == "require" && $$2 == "k8s.io/kubernetes" {print $$3}' .ci/kube/go.mod)
KUBE_BINARIES := kube-apiserver kube-controller-manager kube-scheduler kubectl
KUBE_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION)))
# The KServe controller (manager) at the CRDs' version: v0.21.0, the Python SDK's, is refused by the Go proxy.
KSERVE_DIR := $(CURDIR)/.tools/kserve

$(TOOLS)/.stamp-kube-$(KUBE_VERSION): .ci/kube/go.mod .ci/kube/go.sum
	@mkdir -p $(TOOLS)
	@.ci/disk-free.sh "$$(go env GOCACHE)" 6 "the Kubernetes control plane build (Go module and build caches)"
	@echo "building Kubernetes $(KUBE_VERSION) control plane ($(KUBE_BINARIES)) with go build (first time: ~12 min on 2 cores)"
	cd .ci/kube && CGO_ENABLED=0 go build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(TOOLS)/ \
	  $(addprefix k8s.io/kubernetes/cmd/,$(KUBE_BINARIES))
	@rm -f $(TOOLS)/.stamp-kube-* && touch $@

# The manager is built from a writable copy of the module source so that its own replace directives apply;
# its CRDs, webhook configurations and inferenceservice-config go beside it for the test fixture.
$(KSERVE_DIR)/.stamp-$(KSERVE_CRD_VERSION):
	@.ci/disk-free.sh "$$(go env GOCACHE)" 3 "the KServe controller build (Go module and build caches)"
	@echo "building the KServe $(KSERVE_CRD_VERSION) controller (first time: ~5 min)"
	src=$$(go mod download -json github.com/kserve/kserve@$(KSERVE_CRD_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && \
	[ -d "$$src" ] && rm -rf $(KSERVE_DIR) && mkdir -p $(KSERVE_DIR)/crds && cp -r "$$src" $(KSERVE_DIR)/src && \
	chmod -R u+w $(KSERVE_DIR)/src && \
	install -m 644 $(KSERVE_DIR)/src/config/crd/full/serving.kserve.io_*.yaml \
	  $(KSERVE_DIR)/src/config/crd/full/clusterstoragecontainer/serving.kserve.io_*.yaml $(KSERVE_DIR)/crds/ && \
	install -m 644 $(KSERVE_DIR)/src/config/storagecontainers/default.yaml $(KSERVE_DIR)/storage-container.yaml && \
	install -m 644 $(KSERVE_DIR)/src/config/webhook/manifests.yaml $(KSERVE_DIR)/webhooks.yaml && \
	install -m 644 $(KSERVE_DIR)/src/config/configmap/inferenceservice.yaml $(KSERVE_DIR)/inferenceservice-config.yaml && \
	cd $(KSERVE_DIR)/src && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(TOOLS)/kserve-manager ./cmd/manager
	rm -rf $(KSERVE_DIR)/src
	@touch $@

# etcd from Debian's etcd-server package, through the same best-effort apt path as Prometheus.
etcd:
	@if command -v etcd >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's etcd-server package (the cluster test tier's etcd)"; \
	  $$sudo apt-get install -y -qq --no-install-recommends etcd-server >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends etcd-server >/dev/null; } || \
	  echo "WARNING: could not install etcd-server (needs root or sudo): the cluster tests will fail"; \
	else \
	  echo "WARNING: no apt-get: install etcd yourself for the cluster tests"; \
	fi

cluster-tools: $(TOOLS)/.stamp-kube-$(KUBE_VERSION) $(KSERVE_DIR)/.stamp-$(KSERVE_CRD_VERSION) etcd

# ---- the node tier (pytest -m node, make cluster-e2e): a kubelet + containerd node in namespaces -----------------
# Kept out of `make tools` so that `make test` does not build it. The kubelet comes from the same wrapper module
# and ldflags as the control plane; containerd, ctr and the runc shim from the Go module proxy (without cgo, so
# without btrfs); the pause image from Kubernetes' own build/pause/linux/pause.c (gcc -static) and a tiny test
# image (.ci/node/nettest.c), both as docker-archives for `ctr images import`; runc, the CNI plugins, socat,
# umoci and skopeo from Debian (best effort, like prometheus). Each piece once per pin: the stamps name them.
CONTAINERD_VERSION ?= v2.4.2
NODE_DIR := $(CURDIR)/.tools/node
NODE_DEBS := runc containernetworking-plugins socat umoci skopeo gcc libc6-dev

$(TOOLS)/.stamp-kubelet-$(KUBE_VERSION): .ci/kube/go.mod .ci/kube/go.sum
	@mkdir -p $(TOOLS)
	@echo "building the kubelet $(KUBE_VERSION) with go build (first time: several minutes)"
	cd .ci/kube && CGO_ENABLED=0 go build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(TOOLS)/ k8s.io/kubernetes/cmd/kubelet
	@rm -f $(TOOLS)/.stamp-kubelet-* && touch $@

$(TOOLS)/.stamp-containerd-$(CONTAINERD_VERSION):
	@mkdir -p $(TOOLS)
	@echo "building containerd $(CONTAINERD_VERSION), ctr and containerd-shim-runc-v2 with go install (first time: ~2 min)"
	GOBIN=$(TOOLS) CGO_ENABLED=0 GOFLAGS=-trimpath go install -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
	  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
	  $(addprefix github.com/containerd/containerd/v2/cmd/,$(addsuffix @$(CONTAINERD_VERSION),containerd ctr containerd-shim-runc-v2))
	@rm -f $(TOOLS)/.stamp-containerd-* && touch $@

# The pause and test images (.ci/node/images.sh): pause.c at the kubelet's release and .ci/node/nettest.c, static,
# as docker-archives with pause.ref naming the pause image; for amd64 with gcc, for the arm64 node (make arm64-node)
# cross-compiled with Debian's aarch64-linux-gnu-gcc.
NODE_IMAGE_INPUTS := .ci/node/nettest.c .ci/node/image.sh .ci/node/images.sh
$(NODE_DIR)/.stamp-images-$(KUBE_VERSION): $(NODE_IMAGE_INPUTS) | node-debs
	.ci/node/images.sh amd64 gcc $(NODE_DIR)/images $(KUBE_VERSION)
	@rm -f $(NODE_DIR)/.stamp-images-* && touch $@

NODE_ARM64_DEBS := gcc-aarch64-linux-gnu libc6-dev-arm64-cross
$(NODE_DIR)/.stamp-arm64-images-$(KUBE_VERSION): $(NODE_IMAGE_INPUTS) | node-debs
	@command -v aarch64-linux-gnu-gcc >/dev/null || { sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's $(NODE_ARM64_DEBS) (the arm64 node's pause and test images)"; \
	  $$sudo apt-get install -y -qq --no-install-recommends $(NODE_ARM64_DEBS) >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $(NODE_ARM64_DEBS) >/dev/null; }; }
	.ci/node/images.sh arm64 aarch64-linux-gnu-gcc $(NODE_DIR)/images-arm64 $(KUBE_VERSION)
	@rm -f $(NODE_DIR)/.stamp-arm64-images-* && touch $@

node-debs:
	@if command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] && command -v socat >/dev/null && \
	  command -v umoci >/dev/null && command -v skopeo >/dev/null && command -v gcc >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's $(NODE_DEBS) (the node tier)"; \
	  $$sudo apt-get install -y -qq --no-install-recommends $(NODE_DEBS) >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $(NODE_DEBS) >/dev/null; } || \
	  echo "WARNING: could not install $(NODE_DEBS) (needs root or sudo): the node tests will fail"; \
	else \
	  echo "WARNING: no apt-get: install runc, the CNI plugins (/usr/lib/cni), socat, umoci, skopeo and gcc yourself"; \
	fi

node-tools: node-debs $(TOOLS)/.stamp-kubelet-$(KUBE_VERSION) $(TOOLS)/.stamp-containerd-$(CONTAINERD_VERSION) \
  $(NODE_DIR)/.stamp-images-$(KUBE_VERSION)

# The arm64 node's kubelet: the same module and ldflags, built for arm64 (Go cross-compiles; no cgo), run under
# qemu-user in the node. The kubelet labels its Node kubernetes.io/arch with its own GOARCH, and only that.
$(TOOLS)/.stamp-arm64-kubelet-$(KUBE_VERSION): .ci/kube/go.mod .ci/kube/go.sum
	@mkdir -p $(TOOLS)/linux-arm64
	@echo "building the kubelet $(KUBE_VERSION) for linux/arm64 with go build (first time: several minutes)"
	cd .ci/kube && CGO_ENABLED=0 GOARCH=arm64 go build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(TOOLS)/linux-arm64/ \
	  k8s.io/kubernetes/cmd/kubelet
	@rm -f $(TOOLS)/.stamp-arm64-kubelet-* && touch $@

# The node tier: the control plane of the cluster tier plus a real node (tests/cluster_node.py); not in `make test`.
# The predictor's end-to-end test (tests/node/test_predictor_e2e.py) takes its images from make images-local
# (TSR_IMAGES_DIR, default .state/images); tests/node/test_pipeline_steps.py runs ingest and train as pods from the
# component image. Each leaves a summary, pass or fail; tests/e2e_summary.py joins them into the one JSON line printed.
E2E_SUMMARIES := .state/cluster-e2e
# The images come from `make images-local` (cached: rebuilt only when their inputs change); with TSR_IMAGES_DIR set
# (archives built elsewhere) that step is skipped.
cluster-e2e: venv node-tools cluster-tools $(if $(TSR_IMAGES_DIR),,images-local)
	@rm -f $(E2E_SUMMARIES)/*.json
	@$(PY) -m pytest -q -m "node and not arm64" tests/node; status=$$?; $(PY) -m tests.e2e_summary; exit $$status

# The arm64 node (tests/node/arm64; docs/images.md "arm64 here, under emulation"): a second node whose kubelet and
# containers are arm64 code under qemu-user, beside the amd64 one; the predictor is deployed with the arm64
# placement, lands there and answers. Its images: the arm64 ones (build.sh, cached; with TSR_IMAGES_DIR set, taken
# from $$TSR_IMAGES_DIR/arm64 instead). Needs root; not part of make test or cluster-e2e. Prints one JSON line.
ARM64_NODE_SUMMARY := .state/cluster-e2e/arm64-node.json
arm64-node: venv node-tools cluster-tools images-tools $(TOOLS)/minio $(TOOLS)/qemu-aarch64 \
  $(TOOLS)/.stamp-arm64-kubelet-$(KUBE_VERSION) $(NODE_DIR)/.stamp-arm64-images-$(KUBE_VERSION)
	$(if $(TSR_IMAGES_DIR),,TAG=$(TAG) PLATFORMS=linux/arm64 PYTHON_IMAGE=$(PYTHON_IMAGE) .ci/images/build.sh)
	@rm -f $(ARM64_NODE_SUMMARY)
	@$(PY) -m pytest -q -m node tests/node/arm64; status=$$?; \
	  if [ -f $(ARM64_NODE_SUMMARY) ]; then cat $(ARM64_NODE_SUMMARY); else echo '{"arm64_node": null}'; fi; exit $$status

# A control plane + KServe + a node for people: prints a kubeconfig path, runs until Ctrl-C.
cluster-up: venv node-tools cluster-tools
	$(PY) -m tests.cluster_up

actionlint: $(TOOLS)/actionlint
	$(TOOLS)/actionlint -color .github/workflows/*.yml

$(AUDIT_VENV)/.stamp-$(PIP_AUDIT_VERSION):
	rm -rf $(AUDIT_VENV) && $(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install -q --timeout 30 --retries 1 pip-audit==$(PIP_AUDIT_VERSION)
	@touch $@

audit: $(AUDIT_VENV)/.stamp-$(PIP_AUDIT_VERSION)
	$(AUDIT_VENV)/bin/python .ci/audit.py --pip-audit $(AUDIT_VENV)/bin/pip-audit --timeout $(AUDIT_TIMEOUT) requirements.lock

soak: venv
	TSR_LOAD_SECONDS=600 TSR_LOAD_USERS=32 TSR_LOAD_IDLE_SECONDS=15 TSR_LOAD_REPORT_DIR=.state/soak \
	  $(PY) -m pytest tests/serving/test_load.py -q -s

# A deeper fuzz run than make test's (10x the examples; minutes).
fuzz: venv
	TSR_FUZZ_SCALE=10 $(PY) -m pytest tests/serving/test_fuzz.py -q -s
