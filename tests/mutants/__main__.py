"""`python -m tests.mutants`: see `tests/mutants/runner.py`."""

from tests.mutants.runner import main

raise SystemExit(main())
