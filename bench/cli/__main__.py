"""``python -m bench.cli``: the ``bench`` command without its console script (e.g. in a job script)."""

import sys

from bench.cli.app import main

sys.exit(main())
