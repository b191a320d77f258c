"""``python -m benchmarks`` (from the repository root): see benchmarks/__init__.py."""

import sys

from benchmarks.run import main

sys.exit(main())
