"""Classic recurrent-network tasks trained with fastrnn: ``python -m examples.<name> --help``."""
