# Two commands do all the set-up on a fresh machine:
#   make hello-world   installs everything, then runs the demo on a local broker (Apache Kafka)
#   make test          installs everything, then runs the whole suite on Apache Kafka, and the
#                      hello-world and core pipeline tests on Tansu (the memory-only broker) too
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install hello-world test eval bench

install:
	# Debian's Chromium for the browser test (Playwright drives it; it never downloads a browser).
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	# Tux Paint's stamps (GPL-2): the labelled pictures of `hello-world --images`, its tests and benchmark.
	test -d /usr/share/tuxpaint/stamps || { apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default >/dev/null; }
	# torch first, pinned: these machines hold its CPU build; a bare `torch` pulls GBs of CUDA wheels.
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	# Every extra (encode, index, local: README "Install") and the tests' tools; editable, for development.
	$(PIP) install --quiet --disable-pip-version-check -e '.[all,test]'
	# Apache Kafka (KRaft) jars from Maven Central into ~/.cache/streamsearch, once (streams/local/kafka/pom.xml).
	$(PYTHON) -m streams.local.apache_kafka >/dev/null

hello-world: install
	$(PYTHON) -m streams.cli hello-world $(ARGS)

# The suites the local default must keep passing on the memory-only broker as well.
TANSU_TESTS := tests/e2e/test_hello_world.py tests/e2e/test_pipeline.py

# Test sessions side by side on Apache Kafka (pytest-xdist), each with its own broker; a file's tests stay in
# one session (their module fixtures start flows). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: install
	STREAMSEARCH_TEST_BROKER=kafka $(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)
	STREAMSEARCH_TEST_BROKER=tansu $(PYTHON) -m pytest $(TANSU_TESTS) $(ARGS)

eval: install
	$(PYTHON) -m streams.cli eval --beir ../shared/data/scifact $(ARGS)

bench: install
	$(PYTHON) benchmarks/encoder.py
	$(PYTHON) benchmarks/ingest.py
	$(PYTHON) benchmarks/query.py
	$(PYTHON) benchmarks/restore.py
	$(PYTHON) benchmarks/vectors.py
	$(PYTHON) benchmarks/query_hops.py
	$(PYTHON) benchmarks/insert_cpu.py
	$(PYTHON) benchmarks/shard_apply.py
