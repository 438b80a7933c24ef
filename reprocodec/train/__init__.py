"""Training, export and evaluation of the shipped image-codec weights.

Pipeline (each step is one command; see the module docstrings):
    python -m reprocodec.train.data --out data/train
    python -m reprocodec.train.schedule            # trains every shipped model, exports each
    python -m reprocodec.train.evaluate --weights reprocodec/weights/<name>.pt --images DIR
"""
