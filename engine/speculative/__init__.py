"""Speculative decoding with the checkpoint's MTP head: draft k tokens, verify them in one target
forward over k+1 positions, keep the DeltaNet state of every verified position in its own slot and
make the slot of the last accepted position the live one (an index update, never a copy)."""
