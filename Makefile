# taxi-mlops: one model's life in production — train, register, serve, monitor.
# `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include versions.env

PYTHON ?= python3
# Where the cluster comes from: kind (a node image, needs docker and a registry), or source: Kubernetes, CoreDNS and
# KServe's controllers built from Go modules on this machine and run on one node of Debian's containerd
# (`cluster/build`, `cluster/source`; root). SOURCE_NODE=no: the control plane alone, no pods run.
PROVIDER ?= kind
SOURCE_NODE ?= yes
TAXI_MLOPS_CACHE ?= $(HOME)/.cache/taxi-mlops
# cluster/source's state: certificates, etcd's data, logs, the admin kubeconfig.
SOURCE_CLUSTER_DIR ?= $(CURDIR)/.local/cluster
export TAXI_MLOPS_CACHE SOURCE_CLUSTER_DIR
ifeq ($(PROVIDER),source)
KUBECTL ?= $(TAXI_MLOPS_CACHE)/k8s-$(K8S_VERSION)/bin/kubectl --kubeconfig $(SOURCE_CLUSTER_DIR)/kubeconfig
# What differs from kind (MinIO's and the sklearn runtime's stand-ins) is in this overlay, on top of kind's.
OVERLAY ?= manifests/overlays/source
else ifeq ($(PROVIDER),kind)
KUBECTL ?= kubectl
else
$(error PROVIDER=$(PROVIDER): use kind or source)
endif
KIND ?= kind
DOCKER ?= docker
CLUSTER_NAME ?= taxi-mlops
NAMESPACE := taxi-mlops
# One MinIO user per component, named after its policy document; `make secret` makes each one's Secret s3-USER.
S3_USERS := $(sort $(basename $(notdir $(wildcard manifests/base/s3-policies/*.json))))
OVERLAY ?= manifests/overlays/kind
# Generated, git-ignored: $(OVERLAY) with every image tagged TAG (`make overlay`).
BUILD_DIR ?= .build
TAGGED_OVERLAY := $(BUILD_DIR)/overlay
# kustomize takes only relative paths to other kustomizations.
OVERLAY_FROM_TAGGED = $(shell $(PYTHON) -c 'import os, sys; print(os.path.relpath(*sys.argv[1:]))' $(OVERLAY) $(TAGGED_OVERLAY))

LOCAL_PORT ?= 8080
# Months the training Job reads: YYYY-MM downloads from TLC; s3://data/… after `make upload-data` (no internet).
# PROVIDER=source with DATA_DIR (the cluster has no internet): `make deploy` uploads that folder's months and a
# YYYY-MM names the uploaded one.
TRAIN_DATA ?= 2022-01
VAL_DATA ?= 2022-02
OFFLINE := $(if $(and $(filter source,$(PROVIDER)),$(DATA_DIR)),yes)
data-uri = $(if $(and $(OFFLINE),$(if $(findstring /,$(1)),,month)),s3://data/green_tripdata_$(1).parquet,$(1))
# The fair gate's margin for `make train`: a negative one lets a worse model through (to serve an older one on purpose).
GATE_MARGIN ?= 0.01
CERT_MANAGER_URL := https://github.com/cert-manager/cert-manager/releases/download/$(CERT_MANAGER_VERSION)/cert-manager.yaml
# Upstream's install files: the release's URL, or a folder holding the same files (for machines without internet).
KSERVE_RELEASE ?= https://github.com/kserve/kserve/releases/download/$(KSERVE_VERSION)
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
# One folder, one environment, one image each.
COMPONENTS := training tracking transformer monitoring
# Built by `make images` too: moto's S3 server, which stands in for MinIO where MinIO's image cannot be had; from
# source, the storage initializer KServe injects (no registry serves upstream's), tagged with its name too.
IMAGES := $(COMPONENTS) s3
ifeq ($(PROVIDER),source)
IMAGES += storage-initializer
STORAGE_INITIALIZER_IMAGE := kserve/storage-initializer:$(KSERVE_VERSION)
endif
# Our own base, built from Debian's archive (`make base-image`): `make images PYTHON_IMAGE=$(BASE_IMAGE)`.
BASE_IMAGE ?= taxi-mlops/python:3.11-bookworm
ifeq ($(PROVIDER),source)
# Where this tier runs no registry serves versions.env's base: ours, built by `make images` when missing.
PYTHON_IMAGE = $(BASE_IMAGE)
endif
DOCKER_BUILD_FLAGS ?=
# Every environment `make setup` syncs; the stand-ins' images (s3, storage-initializer) have their own.
ENVS := $(addsuffix /pyproject.toml,ride $(COMPONENTS) s3 storage-initializer local tests)
LOCAL := local/.venv/bin/python -m local
PYTEST_ARGS ?=

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
		/^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ On one machine (no Kubernetes, no Docker)

.PHONY: demo
demo: setup ## Run the whole loop locally: S3, MLflow, train, serve, replay rides, drift job, summary (DATA_DIR=… to work offline)
	$(LOCAL) demo

.PHONY: loop
loop: setup ## Close the loop locally: older model on newer rides, drift job asks for retraining, challenger promoted, rollback
	$(LOCAL) loop

.PHONY: up
up: setup ## Start the system on this machine (S3, MLflow, trained model, predictor, transformer) and leave it running
	$(LOCAL) up

.PHONY: traffic
traffic: setup ## Replay rides through localhost:LOCAL_PORT and report their actual durations to s3://actuals (the system `make up` started, or the cluster's port-forward)
	@if [ -f "$${STATE_DIR:-.local}/up.json" ]; then $(LOCAL) traffic --url http://localhost:$(LOCAL_PORT); else 	$(call minio-as,s3-dispatcher,AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY); 	$(LOCAL) traffic --url http://localhost:$(LOCAL_PORT); fi

.PHONY: down
down: ## Stop the system started by `make up`
	@if [ -x local/.venv/bin/python ]; then $(LOCAL) down; else echo "nothing to stop"; fi

##@ On a cluster (kind: needs docker, kind, kubectl; PROVIDER=source: built here, see cluster/source)

.PHONY: deploy
deploy: cluster kserve images load secret apply $(if $(OFFLINE),upload-data) train ## Everything: cluster, KServe, images, MinIO + MLflow, training, InferenceService rolled out
	@echo "==> deployed: run \`make port-forward\` in another terminal, then \`make predict\`, \`make traffic\`, \`make drift\`"

.PHONY: cluster
ifeq ($(PROVIDER),source)
cluster: ## Start the cluster (kind: CLUSTER_NAME from the pinned node image; source: build the binaries if missing, start the control plane and the node); idempotent
	@echo "==> cluster from source (Kubernetes $(K8S_VERSION), etcd $(ETCD_VERSION)$(if $(filter no,$(SOURCE_NODE)),, and a node))"
	cluster/build
	cluster/source up$(if $(filter no,$(SOURCE_NODE)), --no-node)
else
cluster: check-kind
	@echo "==> kind cluster $(CLUSTER_NAME)"
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(CLUSTER_NAME)' \
		|| $(KIND) create cluster --name $(CLUSTER_NAME) --image $(KIND_NODE_IMAGE) --config kind-config.yaml --wait 120s
	$(KUBECTL) config use-context kind-$(CLUSTER_NAME)
endif

# Upstream's order, step by step: each object reaches the API server only once what admits it is there.
# cert-manager's webhook is Available before cainjector has given the API server its CA: wait for the CA too.
# kserve.yaml has no Namespace and holds a ClusterStorageContainer next to its CRD: namespace and CRDs first.
# kserve-cluster-resources.yaml is admitted by llmisvc-controller-manager's webhook: every Deployment first.
# The shipped config says Serverless (Knative): Standard is patched in before any InferenceService is admitted.
.PHONY: kserve
kserve: check-kubectl ## Install cert-manager and KServe (Standard mode, no Knative/Istio) in upstream's order, each step waited for
	$(cert-manager)
	@echo "==> KServe $(KSERVE_VERSION)"
	$(KUBECTL) create namespace kserve --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) apply --server-side --force-conflicts -f $(KSERVE_RELEASE)/kserve-crds.yaml
	$(wait-crds)
	$(KUBECTL) apply --server-side --force-conflicts -f $(KSERVE_RELEASE)/kserve.yaml
	$(KUBECTL) patch configmap/inferenceservice-config -n kserve --type merge \
		-p '{"data":{"deploy":"{\"defaultDeploymentMode\":\"Standard\"}"}}'
	$(wait-crds)
	$(kserve-controllers)
	@$(apply-cluster-resources)
	$(KUBECTL) get clusterservingruntime kserve-sklearnserver

# kserve-cluster-resources.yaml, every object applied. One of v0.20.0's is refused by its own CRD on a real API server
# (the LLMInferenceServiceConfig kserve-config-llm-tokenizer sets spec.router.scheduler.tokenizer, which kserve.yaml's
# CRD does not declare): LLM serving only, which this project does not use. That refusal is named and let through;
# any other error stops make.
define apply-cluster-resources
err=$$(mktemp); echo "$(KUBECTL) apply --server-side --force-conflicts -f $(KSERVE_RELEASE)/kserve-cluster-resources.yaml"; \
if $(KUBECTL) apply --server-side --force-conflicts -f $(KSERVE_RELEASE)/kserve-cluster-resources.yaml 2>$$err; then \
	cat $$err >&2; \
elif grep -q "$(KNOWN_REFUSAL)" $$err && ! grep -v "$(KNOWN_REFUSAL)" $$err | grep -v '^Warning:' | grep -q .; then \
	grep '^Warning:' $$err >&2 || true; \
	echo "warning: upstream's LLMInferenceServiceConfig kserve-config-llm-tokenizer refused by v0.20.0's own CRD (spec.router.scheduler.tokenizer): LLM serving only, not used here"; \
else \
	cat $$err >&2; rm -f $$err; exit 1; \
fi; rm -f $$err
endef
KNOWN_REFUSAL := kserve-config-llm-tokenizer.*\.spec\.router\.scheduler\.tokenizer: field not declared in schema

# What differs between providers in `make kserve`: on kind cert-manager itself, and the controllers' Deployments;
# from source a stand-in for cert-manager, and the controllers as upstream's Deployments on the node (as processes
# without one; cluster/source says how and why).
ifeq ($(PROVIDER),source)
define cert-manager
@echo "==> cert-manager stand-in (cluster/source: no cert-manager build is fetchable)"
cluster/source cert-manager
endef
define kserve-controllers
cluster/source kserve
endef
else
define cert-manager
@echo "==> cert-manager $(CERT_MANAGER_VERSION)"
$(KUBECTL) apply -f $(CERT_MANAGER_URL)
$(wait-crds)
$(KUBECTL) wait --for=condition=Available deployment --all -n cert-manager --timeout=300s
$(KUBECTL) wait --for=jsonpath='{.webhooks[0].clientConfig.caBundle}' --timeout=120s \
	validatingwebhookconfiguration/cert-manager-webhook mutatingwebhookconfiguration/cert-manager-webhook
endef
define kserve-controllers
$(KUBECTL) wait --for=condition=Available deployment --all -n kserve --timeout=300s
endef
endif

.PHONY: images
images: check-docker check-tag $(if $(filter $(BASE_IMAGE),$(PYTHON_IMAGE)),base-image) ## Build the images tagged TAG on PYTHON_IMAGE (versions.env; PROVIDER=source: `make base-image`'s, built when missing)
	@echo "==> images $(IMAGES), tag $(TAG)"
	@echo "    on $(PYTHON_IMAGE)"
	@for image in $(IMAGES); do \
		echo "--> taxi-mlops/$$image:$(TAG)"; \
		$(DOCKER) build -f $$image/Dockerfile --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t taxi-mlops/$$image:$(TAG) --quiet $(DOCKER_BUILD_FLAGS) . >/dev/null; \
	done
	$(if $(STORAGE_INITIALIZER_IMAGE),$(DOCKER) tag taxi-mlops/storage-initializer:$(TAG) $(STORAGE_INITIALIZER_IMAGE))

.PHONY: load
ifeq ($(PROVIDER),source)
load: check-docker check-tag ## Load the images tagged TAG into the cluster (kind: CLUSTER_NAME; source: the node's containerd) (after `make images`)
	cluster/source load $(foreach image,$(filter-out storage-initializer,$(IMAGES)),taxi-mlops/$(image):$(TAG)) $(STORAGE_INITIALIZER_IMAGE)
else
load: check-docker check-kind check-tag
	@for image in $(COMPONENTS); do $(KIND) load docker-image taxi-mlops/$$image:$(TAG) --name $(CLUSTER_NAME); done
endif

.PHONY: base-image
base-image: check-docker ## Build BASE_IMAGE, Python 3.11 on Debian bookworm by debootstrap, for machines no registry serves (needs root)
	base/build $(BASE_IMAGE)

.PHONY: secret
secret: check-kubectl ## Create MinIO's root credentials and one S3 user's per component (random, per cluster, never in git)
	@echo "==> secrets minio-root and $(addprefix s3-,$(S3_USERS))"
	$(KUBECTL) apply -f manifests/base/namespace.yaml
	@$(KUBECTL) get secret minio-root -n $(NAMESPACE) >/dev/null 2>&1 || \
		$(KUBECTL) create secret generic minio-root -n $(NAMESPACE) \
			"--from-literal=MINIO_ROOT_USER=taxi-$$(openssl rand -hex 4)" \
			"--from-literal=MINIO_ROOT_PASSWORD=$$(openssl rand -hex 24)"
	$(foreach user,$(S3_USERS),$(call s3-user-secret,$(user)))
	$(KUBECTL) annotate --overwrite secret s3-predictor -n $(NAMESPACE) \
		serving.kserve.io/s3-endpoint=minio.$(NAMESPACE):9000 serving.kserve.io/s3-usehttps=0 \
		serving.kserve.io/s3-region=us-east-1 serving.kserve.io/s3-verifyssl=0

# $(call s3-user-secret,USER): the Secret s3-USER with USER's keys, kept when it exists (the set-up Job makes the user).
define s3-user-secret
@$(KUBECTL) get secret s3-$(1) -n $(NAMESPACE) >/dev/null 2>&1 || \
	$(KUBECTL) create secret generic s3-$(1) -n $(NAMESPACE) "--from-literal=AWS_ACCESS_KEY_ID=$(1)" \
		"--from-literal=AWS_SECRET_ACCESS_KEY=$$(openssl rand -hex 24)"

endef

.PHONY: overlay
overlay: check-tag ## Write BUILD_DIR/overlay: OVERLAY with every image tagged TAG (git-ignored, rewritten each time)
	@mkdir -p $(TAGGED_OVERLAY)
	@printf '%s\n' '# Written by `make overlay` from TAG; not in git.' \
		'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
		'resources: [$(OVERLAY_FROM_TAGGED)]' 'images:' \
		$(foreach image,$(IMAGES),'  - {name: taxi-mlops/$(image), newTag: "$(TAG)"}') \
		> $(TAGGED_OVERLAY)/kustomization.yaml

.PHONY: apply
apply: check-kubectl overlay ## Apply the manifests (MinIO, its buckets and users, MLflow, RBAC, the CronJobs) and wait for them
	@echo "==> manifests $(OVERLAY), tag $(TAG)"
	$(KUBECTL) delete job minio-setup -n $(NAMESPACE) --ignore-not-found
	$(KUBECTL) apply -k $(TAGGED_OVERLAY)
	@ready=$$($(KUBECTL) get nodes -o jsonpath='{.items[*].status.conditions[?(@.type=="Ready")].status}'); \
	if [[ "$$ready" != *True* ]]; then \
		echo "no node is Ready: not waiting for deployment/minio, deployment/mlflow, job/minio-setup"; \
	else \
		$(KUBECTL) wait --for=condition=Available deployment/minio deployment/mlflow -n $(NAMESPACE) --timeout=300s; \
		$(call wait-job,minio-setup,300); \
	fi

.PHONY: train
train: check-kubectl ## Run a training Job on TRAIN_DATA/VAL_DATA (GATE_MARGIN): register, gate @staging, roll the InferenceService
	@echo "==> training Job on $(call data-uri,$(TRAIN_DATA)) / $(call data-uri,$(VAL_DATA)) (logs: kubectl logs -n $(NAMESPACE) job/training -c train -f)"
	$(KUBECTL) create configmap training-data -n $(NAMESPACE) --from-literal=TRAIN_DATA=$(call data-uri,$(TRAIN_DATA)) \
		--from-literal=VAL_DATA=$(call data-uri,$(VAL_DATA)) --from-literal=GATE_MARGIN=$(GATE_MARGIN) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(call job-from-cronjob,training,train,1800)

.PHONY: rollback
rollback: check-kubectl ## Point @staging back at @previous (and @previous at what it held) and roll the InferenceService to it
	@echo "==> rollback Job: @staging back to @previous (logs: kubectl logs -n $(NAMESPACE) job/rollback -c rollback -f)"
	$(call job-from-cronjob,rollback,rollback,1200)

# $(call job-from-cronjob,NAME,STEP,SECONDS): (re)create Job NAME from the suspended CronJob NAME, wait for it (wait-job),
# print the last line of its step STEP (its JSON), and check that the InferenceService its deploy container rolled is Ready.
define job-from-cronjob
$(KUBECTL) delete job $(1) -n $(NAMESPACE) --ignore-not-found
$(KUBECTL) create job $(1) --from=cronjob/$(1) -n $(NAMESPACE)
@$(call wait-job,$(1),$(3))
$(KUBECTL) logs -n $(NAMESPACE) job/$(1) -c $(2) --tail=1
$(KUBECTL) wait --for=condition=Ready inferenceservice/trip-duration -n $(NAMESPACE) --timeout=60s
endef

.PHONY: upload-data
upload-data: check-kubectl setup ## Copy DATA_DIR's TLC months into the cluster's s3://data/ (for clusters without internet)
	@test -n "$(DATA_DIR)" || { echo "set DATA_DIR to a folder of green_tripdata_YYYY-MM.parquet files"; exit 1; }
	@$(call minio-as,minio-root,MINIO_ROOT_USER,MINIO_ROOT_PASSWORD); \
	$(LOCAL) upload --to s3://data/ $(DATA_DIR)/green_tripdata_*.parquet
	@echo "now: make train TRAIN_DATA=s3://data/green_tripdata_2022-01.parquet VAL_DATA=s3://data/green_tripdata_2022-02.parquet (PROVIDER=source with DATA_DIR: TRAIN_DATA=2022-01 names the upload)"

.PHONY: port-forward
port-forward: check-kubectl ## Forward localhost:LOCAL_PORT to the transformer (leave it running)
	$(KUBECTL) port-forward -n $(NAMESPACE) service/trip-duration-transformer $(LOCAL_PORT):80

.PHONY: predict
predict: ## POST the workshop's ride to localhost:LOCAL_PORT (port-forward or `make up`)
	curl -sS -H 'Content-Type: application/json' http://localhost:$(LOCAL_PORT)/v1/models/trip-duration:predict \
		-d '{"ride_id": "ride_xyz", "ride": {"PULocationID": 100, "DOLocationID": 102, "trip_distance": 30}}'
	@echo

.PHONY: drift
drift: check-kubectl ## Run the drift CronJob now and print its table (exit 1 when the Job fails); it may start a retraining Job
	@job=drift-now-$$(date +%s); \
	$(KUBECTL) create job $$job --from=cronjob/drift -n $(NAMESPACE); \
	$(call wait-job,$$job,900); \
	$(KUBECTL) logs -n $(NAMESPACE) job/$$job

# Kept: the namespace, MinIO's and MLflow's volumes (labelled app.kubernetes.io/component=data) and the Secrets,
# which no manifest holds. `make deploy` afterwards finds them again.
.PHONY: undeploy
undeploy: check-kubectl overlay ## Delete the InferenceService and the workloads; keep MinIO's and MLflow's data and the Secrets (`make clean` wipes)
	@echo "==> deleting InferenceService trip-duration and every object of $(OVERLAY) except the namespace and the volumes"
	@echo "    kept: namespace $(NAMESPACE), PersistentVolumeClaims minio-data and mlflow-db, Secrets minio-root and $(addprefix s3-,$(S3_USERS))"
	$(KUBECTL) delete inferenceservice trip-duration -n $(NAMESPACE) --ignore-not-found
	$(KUBECTL) delete -k $(TAGGED_OVERLAY) -l 'app.kubernetes.io/component!=data' --ignore-not-found

.PHONY: clean
ifeq ($(PROVIDER),source)
clean: ## Delete the cluster, and with it every object and all data (source: stop its processes, remove .local/cluster)
	cluster/source delete
	rm -rf $(BUILD_DIR)
else
clean: check-kind
	$(KIND) delete cluster --name $(CLUSTER_NAME)
	rm -rf $(BUILD_DIR)
endif

# The e2e suite's kubectl is the cluster's: from source, the built one with the cluster's kubeconfig.
ifeq ($(PROVIDER),source)
E2E_ENV := KUBECONFIG=$(SOURCE_CLUSTER_DIR)/kubeconfig PATH=$(TAXI_MLOPS_CACHE)/k8s-$(K8S_VERSION)/bin:$$PATH
endif
.PHONY: e2e
e2e: setup ## End-to-end tests on the real cluster `make deploy` made (kind, or PROVIDER=source); on failure, `make diagnose`
	@cd tests && PROVIDER=$(PROVIDER) $(E2E_ENV) .venv/bin/python -m pytest -m e2e -o addopts="-ra" $(PYTEST_ARGS) test_e2e.py \
		|| { $(diagnostics); exit 1; }

.PHONY: diagnose
diagnose: check-kubectl ## Print every pod of taxi-mlops and kserve (state, end of describe, all logs) and the last 100 events
	@$(diagnostics)

define diagnostics
for namespace in $(NAMESPACE) kserve; do \
	$(KUBECTL) get pods -n "$$namespace" -o wide || true; \
	for pod in $$($(KUBECTL) get pods -n "$$namespace" -o name 2>/dev/null); do \
		echo "--- $$namespace/$$pod"; \
		$(KUBECTL) describe -n "$$namespace" "$$pod" | tail -n 30 || true; \
		$(KUBECTL) logs -n "$$namespace" "$$pod" --all-containers --prefix --tail=-1 || true; \
	done; \
done; \
$(KUBECTL) get events -A --sort-by=.lastTimestamp | tail -n 100 || true
endef

# $(call minio-as,SECRET,KEY_ID_FIELD,SECRET_FIELD): for the rest of the recipe line, the cluster's MinIO on a local
# port (a port-forward that ends with the line) with the S3 keys from that Secret in the AWS_* variables.
define minio-as
$(KUBECTL) port-forward -n $(NAMESPACE) service/minio 19000:9000 >/dev/null & pf=$$!; trap "kill $$pf 2>/dev/null" EXIT; \
for attempt in $$(seq 50); do kill -0 $$pf 2>/dev/null && ! (: </dev/tcp/127.0.0.1/19000) 2>/dev/null || break; sleep 0.2; done; \
kill -0 $$pf 2>/dev/null || { echo "kubectl port-forward to service/minio failed (above)" >&2; exit 1; }; \
export AWS_ENDPOINT_URL=http://localhost:19000 \
	AWS_ACCESS_KEY_ID=$$($(KUBECTL) get secret $(1) -n $(NAMESPACE) -o jsonpath='{.data.$(2)}' | base64 -d) \
	AWS_SECRET_ACCESS_KEY=$$($(KUBECTL) get secret $(1) -n $(NAMESPACE) -o jsonpath='{.data.$(3)}' | base64 -d)
endef

# $(call wait-job,NAME,SECONDS): wait up to SECONDS for Job NAME to complete, looking for its Failed condition
# every 10 s; a Job that fails or does not complete in time prints its logs and stops make.
define wait-job
status="did not complete within $(2)s"; \
for elapsed in $$(seq 10 10 $(2)); do \
	if $(KUBECTL) wait --for=condition=Complete job/$(1) -n $(NAMESPACE) --timeout=10s >/dev/null 2>&1; then status=complete; break; fi; \
	if $(KUBECTL) wait --for=condition=Failed job/$(1) -n $(NAMESPACE) --timeout=0s >/dev/null 2>&1; then status=failed; break; fi; \
done; \
if [ "$$status" != complete ]; then \
	echo "job/$(1) $$status; its logs:" >&2; \
	$(KUBECTL) logs -n $(NAMESPACE) job/$(1) --all-containers --prefix --tail=40 >&2 || true; \
	exit 1; \
fi
endef

# Every CRD Established. A CRD created a moment ago has no status yet, and `kubectl wait --for=condition=…` then fails
# at once (".status.conditions accessor error") instead of waiting: that error alone is tried again, for up to 30 s.
define wait-crds
err=$$(mktemp); for attempt in $$(seq 30); do \
	if $(KUBECTL) wait --for=condition=Established crd --all --timeout=120s 2>$$err; then break; fi; \
	if grep -q 'accessor error' $$err && [ $$attempt -lt 30 ]; then sleep 1; else cat $$err >&2; rm -f $$err; exit 1; fi; \
done; rm -f $$err
endef

.PHONY: check-docker check-kind check-kubectl check-tag
check-docker:
	@command -v $(DOCKER) >/dev/null || { echo "docker not found: install Docker (https://docs.docker.com/get-docker/)"; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "docker is installed but its engine is not running"; exit 1; }
check-kind:
	@command -v $(KIND) >/dev/null || { echo "kind not found: install kind $(KIND_VERSION): go install sigs.k8s.io/kind@$(KIND_VERSION), or see https://kind.sigs.k8s.io/docs/user/quick-start/#installation"; exit 1; }
	@installed=$$($(KIND) version | awk '{print $$2}'); [ "$$installed" = "$(KIND_VERSION)" ] || \
		echo "warning: kind $$installed is installed, versions.env pins $(KIND_VERSION), for which $(KIND_NODE_IMAGE) is built: go install sigs.k8s.io/kind@$(KIND_VERSION)" >&2
check-kubectl:
	@command -v $(firstword $(KUBECTL)) >/dev/null || { echo "kubectl not found: see https://kubernetes.io/docs/tasks/tools/ (PROVIDER=source: cluster/build makes one)"; exit 1; }
check-tag:
	@[[ "$(TAG)" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$$ ]] || { echo "TAG=$(TAG) is not an image tag: letters, digits, _ . - (at most 128)"; exit 1; }

##@ Development

.PHONY: setup
setup: ## Install uv if missing and sync every environment from its lock file
	@$(UV) --version >/dev/null 2>&1 || { echo "uv not found: installing it with pip"; $(PYTHON) -m pip install --quiet uv; }
	@for project in $(dir $(ENVS)); do \
		echo "==> syncing $$project"; \
		$(UV) sync --quiet --frozen --project $$project; \
	done

.PHONY: test
test: setup ## Run the whole test suite (unit tests per component, then the black-box tests); builds the source cluster's binaries when missing
	@$(build-source-cluster)
	@for component in ride $(COMPONENTS) s3 storage-initializer; do \
		if [ -d $$component/tests ]; then \
			echo "==> unit tests: $$component"; \
			$$component/.venv/bin/python -m pytest -q $$component/tests; \
		fi; \
	done
	@echo "==> integration tests"
	cd tests && .venv/bin/python -m pytest $(PYTEST_ARGS)

# cluster/build when a Go toolchain is here (about 25 min cold, nothing when cached); without one, or when the module
# proxy refuses a module (exit 2), one line says so and the source-cluster tier skips itself.
define build-source-cluster
if ! command -v go >/dev/null; then \
	echo "==> no Go toolchain: cluster/build skipped (the source-cluster tier runs only if its binaries are cached)"; \
else \
	echo "==> cluster/build (Kubernetes $(K8S_VERSION), etcd $(ETCD_VERSION), KServe $(KSERVE_VERSION); nothing when cached)"; \
	status=0; cluster/build || status=$$?; \
	if [ $$status -eq 2 ]; then echo "==> a module was refused: the source-cluster tier is skipped"; \
	elif [ $$status -ne 0 ]; then exit $$status; fi; \
fi
endef

.PHONY: soak
soak: setup ## 10 minutes of traffic with S3 restarted twice and the predictor once (not part of make test)
	tests/.venv/bin/python bench/soak.py

.PHONY: audit
audit: setup ## pip-audit every component's lock (needs PyPI's vulnerability API or OSV)
	@for project in $(dir $(ENVS)); do \
		echo "==> pip-audit $$project"; \
		$(UV) export --quiet --frozen --no-dev --no-emit-project --no-emit-local --format requirements-txt --project $$project > .audit-requirements.txt; \
		$(UV) tool run pip-audit --disable-pip --no-deps -r .audit-requirements.txt || status=1; \
	done; rm -f .audit-requirements.txt; exit $${status:-0}

.PHONY: bench
bench: setup ## Run the benchmarks and print their tables (results also in bench/results/)
	tests/.venv/bin/python bench/serving.py
	tests/.venv/bin/python bench/drift.py
	monitoring/.venv/bin/python bench/drift_calibration.py
