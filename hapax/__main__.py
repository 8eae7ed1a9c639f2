import sys

from hapax.cli import main

sys.exit(main())
