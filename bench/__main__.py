"""`python -m bench`: the whole benchmark harness (see bench/harness.py)."""

from bench.harness import main

raise SystemExit(main())
