"""Training pipeline that produces neurocodec's shipped weights (not part of the installed package)."""
