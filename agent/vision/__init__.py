"""The detection chain: camera -> motion gate -> detector -> tracker -> counts, scene health."""
