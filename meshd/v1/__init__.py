"""Generated from proto/meshd/v1 by scripts/gen_proto.py; do not edit."""
