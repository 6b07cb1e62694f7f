import sys

from jaxdiff.cli import main

sys.exit(main())
