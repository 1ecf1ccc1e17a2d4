.PHONY: serve test install lint

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
