"""``python -m clients.auditor ACTION …``: the same as ``sovledger audit ACTION …``."""

import sys

from clients.auditor.cli import main

sys.exit(main())
