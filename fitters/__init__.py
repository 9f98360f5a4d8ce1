"""Fitters: signals (image, audio, video, occupancy), the generic fit loop, run directories, ``nf-fit`` and ``nf-bench``."""
