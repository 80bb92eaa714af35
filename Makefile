# Conspirator developer commands.  Everything installs what it needs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-down demo-operator demo-sim test lint typecheck unit e2e e2e-oldest e2e-build e2e-up e2e-down install \
	generate fakenvml gpu-check gpu-check-fake bench-fractional bench-mig bench-parvagpu bench-policies bench-demand bench-scale bench-deviceplugin bench-datapath bench-datapath-model bench-datapath-fairness bench-operator bench-operator-replan clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '.[test]'
	touch $(STAMP)

# Tests run against the installed package, so reinstall the tree on every run (setuptools'
# build/lib* would otherwise keep modules that were removed or renamed since the last build).
install: $(STAMP)
	rm -rf build/lib* build/bdist*
	$(BIN)/pip install -q --no-deps --force-reinstall .

# Quickstart 1: Conspirator installed from its Helm chart on the local cluster (e2e/demo.py;
# needs what `make test` needs): start the cluster, build the images here and import them,
# `helm install` the chart, apply an InferenceJob, send requests through the DPU agent, show
# `kubectl get ij`, then clean up.  DEMO_KEEP=1 leaves it running; `make demo-down` removes it.
demo: install e2e-build
	$(BIN)/python e2e/demo.py $(if $(DEMO_KEEP),--keep)

demo-down: install
	$(BIN)/python e2e/demo.py --down

# The multi-node variant: the operator and one node daemon per kwok GPU node as processes.
demo-operator: install e2e-build
	$(BIN)/python e2e/demo_operator.py $(if $(DEMO_KEEP),--keep)

# The simulator on the default traces (about a minute; needs shared/data, see README).
demo-sim: install
	$(BIN)/conspirator simulate --track fractional --policy conspirator --policy fgd --seeds 2 --out out/demo
	$(BIN)/conspirator simulate --track mig --policy conspirator --policy naive-sharing --seeds 2 --out out/demo

# Quickstart 2: every check CI runs, the real local cluster's end-to-end tests included
# (a cold build of the Kubernetes binaries takes about 6 minutes; then it is cached).
test: install lint typecheck unit e2e e2e-oldest

# Every generated file, from one command (tests fail when any is stale): the CRDs and the API
# reference, the chart's copy of the CRDs, the chart's default ModelProfiles, the gRPC stubs.
generate: install
	$(BIN)/conspirator crdgen --out crds/ --docs docs/api.md
	cp crds/*.yaml charts/conspirator/crds/
	cp operator/deploy/peering.yaml charts/conspirator/crds/peerings.kopf.dev.yaml
	$(BIN)/conspirator default-profiles --out charts/conspirator/files/modelprofiles.yaml
	$(BIN)/conspirator gen-protos
	$(BIN)/python charts/chart_docs.py

# import-linter reads the installed package (from .venv/, off the repository root), like mypy.
lint:
	$(BIN)/ruff check .
	cd $(VENV) && bin/lint-imports $(CURDIR)/pyproject.toml

# mypy checks the installed package: the source tree maps directories to packages
# (operator/ -> conspirator.operator) in a way only the installed copy shows.
typecheck:
	cd $(VENV) && bin/mypy --config-file $(CURDIR)/pyproject.toml -p conspirator
	cd $(VENV) && bin/mypy --config-file $(CURDIR)/pyproject.toml $(CURDIR)/tests $(CURDIR)/benchmarks \
		$(CURDIR)/charts/chart_docs.py $(CURDIR)/images/lock.py
	cd $(VENV) && MYPYPATH=$(CURDIR)/e2e bin/mypy --config-file $(CURDIR)/pyproject.toml \
		$(CURDIR)/e2e/conspirator_e2e $(CURDIR)/e2e/tests $(CURDIR)/e2e/demo.py $(CURDIR)/e2e/demo_operator.py

unit: fakenvml
	$(BIN)/pytest -q

# The fake libnvidia-ml.so.1 that the NVML backend's tests load through the real nvidia-ml-py
# (native/fakenvml/, docs/nvml.md): C against NVIDIA's vendored, checksummed nvml.h.
FAKENVML := build/fakenvml/libnvidia-ml.so.1
FAKENVML_SRC := native/fakenvml/fakenvml.c native/fakenvml/devicefile.c native/fakenvml/instances.c \
	native/fakenvml/persist.c native/fakenvml/state.h \
	native/fakenvml/json.c native/fakenvml/json.h \
	native/fakenvml/nvml/nvml.h native/fakenvml/nvml/SHA256SUMS
fakenvml: $(FAKENVML)
$(FAKENVML): $(FAKENVML_SRC)
	cd native/fakenvml/nvml && sha256sum --quiet -c SHA256SUMS
	mkdir -p $(@D)
	gcc -shared -fPIC -O2 -std=gnu11 -Wall -Wextra -Werror -fvisibility=hidden \
		-Wl,-soname,libnvidia-ml.so.1 -o $@.tmp native/fakenvml/fakenvml.c native/fakenvml/devicefile.c \
		native/fakenvml/instances.c native/fakenvml/persist.c \
		native/fakenvml/json.c -lpthread
	mv $@.tmp $@

# Read-only NVML queries on this machine's GPUs against conspirator/mig.py's catalog, and a
# CUDA smoke test where CUDA is present; never changes MIG mode, layouts or settings.  Exits
# 77 (skipped) without NVML.  gpu-check-fake runs it on the fake: the code path, not hardware.
gpu-check: install
	$(BIN)/python -m conspirator.deviceplugin.gpucheck

gpu-check-fake: install fakenvml
	LD_LIBRARY_PATH=$(CURDIR)/build/fakenvml FAKENVML_CONFIG=$(CURDIR)/native/fakenvml/devices.json \
		$(BIN)/python -m conspirator.deviceplugin.gpucheck --expect-fake

# The local cluster (e2e/README.md): real etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager, kubelet + containerd, kwok GPU nodes; needs root.
e2e-build:
	nice -n 10 e2e/build.sh

e2e-up: install e2e-build
	e2e/cluster.sh up

e2e-down:
	e2e/cluster.sh down

e2e: install e2e-build
	$(BIN)/pytest e2e/tests -q

# The same suite on the oldest supported Kubernetes (e2e/versions-oldest.env: 1.35), on a
# cluster of its own binaries (built and cached like the pinned ones).
OLDEST := $(CURDIR)/e2e/versions-oldest.env
e2e-oldest: install
	CONSPIRATOR_E2E_VERSIONS=$(OLDEST) nice -n 10 e2e/build.sh
	CONSPIRATOR_E2E_VERSIONS=$(OLDEST) $(BIN)/pytest e2e/tests -q

# Benchmarks: each writes its results under benchmarks/results/ (committed).
bench-fractional: install
	$(BIN)/conspirator simulate --track fractional --policy conspirator --policy fgd \
		--policy bestfit --policy random --policy dotprod --policy gpupacking \
		--policy gpuclustering --seeds 10 --out benchmarks/results/fractional

bench-mig: install
	$(BIN)/conspirator simulate --track mig --policy conspirator --policy greedy \
		--policy naive-sharing --policy bestfit --policy gavel --policy whole-gpu \
		--seeds 10 --out benchmarks/results/mig
	$(BIN)/python benchmarks/mig_gap.py --sizes 20 50 100 150 200 --seeds 4 \
		--gpus-per-job 0.9 --name mig_gap_slack --out benchmarks/results/mig --check
	$(BIN)/python benchmarks/mig_gap.py --sizes 20 50 100 150 200 --seeds 4 \
		--gpus-per-job 0.45 --name mig_gap_tight --out benchmarks/results/mig --check

# ParvaGPU's six SLO sets on A100-80GB (docs/parvagpu-track.md; seconds): every measured MPS
# process count, then at most 3 as ParvaGPU's configurator allows.
# The SchedulingPolicy bars (docs/scheduling-policy.md): cost and energy vs gpus on a priced
# cluster, the fair share under 150% oversubscription (about 15 min on 2 cores).
bench-policies: install
	$(BIN)/python benchmarks/policies.py --seeds 1 --out benchmarks/results/policies

bench-parvagpu: install
	rm -rf benchmarks/results/parvagpu
	$(BIN)/conspirator simulate --track parvagpu --policy conspirator --policy parvagpu \
		--out benchmarks/results/parvagpu
	$(BIN)/conspirator simulate --track parvagpu --policy conspirator --policy parvagpu \
		--max-processes 3 --out benchmarks/results/parvagpu/max3

# The MIG track under diurnal demand, 10 seeds (about 10 minutes on 2 cores), then bursty, 3.
bench-demand: install
	$(BIN)/python benchmarks/mig_demand.py --pattern diurnal --seeds 10 \
		--out benchmarks/results/mig/demand_diurnal
	$(BIN)/python benchmarks/mig_demand.py --pattern bursty --seeds 3 \
		--out benchmarks/results/mig/demand_bursty
	$(BIN)/python benchmarks/mig_demand_bound.py --pattern diurnal --seeds 10 \
		--out benchmarks/results/mig/demand_diurnal
	$(BIN)/python benchmarks/mig_demand_bound.py --pattern bursty --seeds 3 \
		--out benchmarks/results/mig/demand_bursty

bench-scale: install
	$(BIN)/python benchmarks/fractional_scale.py

# Node daemon: applier passes, Allocate over gRPC, buffer registration.
bench-deviceplugin: install
	$(BIN)/python benchmarks/deviceplugin_bench.py --out benchmarks/results/deviceplugin

# Data path: the four architectures of DESIGN section 6 at 4 KiB-4 MiB, with and without
# host load (needs 2+ cores and gcc; pins to cores 0 and 1; about 5 minutes).
bench-datapath: install
	$(BIN)/python benchmarks/datapath/dp_bench.py --out benchmarks/results/datapath

# The four architectures with ResNet-18 (ONNX Runtime, CPU) in the loop: the end-to-end
# completion time (dp_model.py; about 3 minutes).
bench-datapath-model: install
	$(BIN)/python benchmarks/datapath/dp_model.py --out benchmarks/results/datapath/model

# A light job's latency beside a saturating one on one agent (dp_fairness.py; ~3 minutes).
bench-datapath-fairness: install
	$(BIN)/python benchmarks/datapath/dp_fairness.py --out benchmarks/results/datapath/fairness

# Operator: 1,000 InferenceJobs on 100 simulated GPU nodes of the local cluster (~6 min).
bench-operator: install e2e-build
	$(BIN)/python benchmarks/operator_scale.py --out benchmarks/results/operator

# The global re-plan in process (no cluster): 1,000 jobs on 800 GPUs and 10,000 on 8,000,
# cold, warm, under the deadline while arrivals are decided, commit and restart check.
bench-operator-replan: install
	nice $(BIN)/python benchmarks/operator_replan.py --jobs 1000 --gpus 800 \
		--jobs 10000 --gpus 8000 --out benchmarks/results/operator

clean:
	rm -rf $(VENV) build *.egg-info out
