import sys

from sovledger.cli import main

sys.exit(main())
