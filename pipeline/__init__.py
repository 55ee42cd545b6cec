"""The newsletter pipeline: essays in, one personalised digest per subscriber out."""
