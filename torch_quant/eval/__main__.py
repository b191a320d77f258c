"""``python -m torch_quant.eval``: see torch_quant/eval/cli.py."""

import sys

from .cli import main

sys.exit(main())
