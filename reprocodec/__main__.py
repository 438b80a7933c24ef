"""`python -m reprocodec` is the `reprocodec` command."""

import sys

from reprocodec.cli import main

sys.exit(main())
