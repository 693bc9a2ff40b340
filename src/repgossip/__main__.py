"""`python -m repgossip` is the `repgossip` command (and what torchrun launches)."""

import sys

from repgossip.cli import main

sys.exit(main())
