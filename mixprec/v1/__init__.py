"""Generated from proto/mixprec/v1 by scripts/gen_proto.py; do not edit."""
