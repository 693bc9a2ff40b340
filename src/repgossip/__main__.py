"""`python -m repgossip` is the `repgossip` command (and what torchrun launches)."""

import sys

try:
    from repgossip.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch imports: nothing has started, nothing to say
    sys.exit(130)

sys.exit(main())
