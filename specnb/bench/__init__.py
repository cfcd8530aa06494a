"""``specnb bench`` (ratios against the peers and the bound, in one process) and ``specnb gpu-check``."""
