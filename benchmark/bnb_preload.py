"""Importing this module imports bitsandbytes the one allowed way (``benchmark.bnb``), if installed: for a
process that preloads peft (which imports bitsandbytes itself), e.g. the memory predictor's fork server."""
from benchmark.bnb import import_bitsandbytes

try:
    import_bitsandbytes()
except ImportError:
    pass
