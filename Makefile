.PHONY: serve test install lint docs docs-serve

# Main job: install into .venv, make the default model if none exists, serve on :8000.
serve:
	scripts/serve.sh

# Tests (CPU only).
test:
	scripts/test.sh

install:
	scripts/install.sh all

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# The docs site: generate the references, then build it strictly into site/.
docs:
	scripts/docs.sh

# The docs site on http://127.0.0.1:8001, rebuilt on every edit.
docs-serve:
	scripts/docs.sh serve
