import sys

from tests.raft.sim import main

sys.exit(main())
