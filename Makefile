.PHONY: help demo test test-fast lint docs
help:  ## list the developer commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'
demo:  ## run the demo (SQLite, local redis-server, simulator, one worker)
	bash scripts/demo
test:  ## run the whole test suite (SQLite and PostgreSQL)
	bash scripts/test
test-fast:  ## the unit and SQL tests only: no redis-server, simulator or worker (~30 s)
	.venv/bin/python -m pytest -q -m "not e2e"
docs:  ## build the documentation (site/); fails on a broken link or a missing setting row
	.venv/bin/mkdocs build --strict
lint:  ## ruff, the types (mypy, strict) and the import contracts (import-linter)
	.venv/bin/ruff check faceid_batch faceid_sim tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports
