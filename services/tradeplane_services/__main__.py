"""`python -m tradeplane_services ...` is `tradeplane-svc ...`."""

import sys

from tradeplane_services.cli import main

sys.exit(main())
