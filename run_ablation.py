#!/usr/bin/env python
"""Run a cumulative ablation of the Bag-of-Tricks refinements. See README.md or --help."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
