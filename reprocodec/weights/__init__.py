"""reprocodec's shipped model weights: every NAME.pt beside its NAME.json in this folder.

Installed as the distribution reprocodec-weights (import name reprocodec_weights; see
pyproject.toml here); reprocodec.shipped.WEIGHTS_DIR finds the folder.
"""
