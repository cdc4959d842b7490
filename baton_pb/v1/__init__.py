"""Generated from proto/baton/v1 by baton_pb.regenerate."""
