import sys

from conspirator.cli import main

sys.exit(main())
