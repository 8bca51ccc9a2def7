"""`python -m bench ...`: the same command line as run_ablation.py."""
import sys

from bench.cli import main

sys.exit(main())
