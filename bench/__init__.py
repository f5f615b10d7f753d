"""fastrnn benchmarks: ``python -m bench``."""
