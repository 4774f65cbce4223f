"""``python -m concord``: the ``concord`` command."""

import sys

from concord.cli import main

sys.exit(main())
