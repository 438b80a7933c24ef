"""`python -m reprocodec.server encoder|decoder [flags]`: the entry points without the scripts."""

import sys

from .main import serve

if len(sys.argv) < 2 or sys.argv[1] not in ("encoder", "decoder"):
    sys.exit("usage: python -m reprocodec.server encoder|decoder [flags] (see --help)")
sys.exit(serve(sys.argv[1], sys.argv[2:]))
