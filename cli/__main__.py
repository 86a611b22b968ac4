"""`python -m cli ...` runs the `rqsid` command."""

import sys

from cli.main import main

sys.exit(main())
