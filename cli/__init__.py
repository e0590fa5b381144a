"""The meshd command line (installed as meshd.cli)."""

import os

# gRPC's C core prints its own log lines on stderr; the CLI says what matters in one line.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
