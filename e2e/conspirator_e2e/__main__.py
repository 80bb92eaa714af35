"""``python -P -m conspirator_e2e`` (with e2e/ on PYTHONPATH): the cluster CLI."""

import sys

from conspirator_e2e.cluster import main

sys.exit(main())
