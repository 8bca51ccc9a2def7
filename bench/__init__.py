"""bench: the Bag-of-Tricks (He et al., CVPR 2019) ablation harness."""

__version__ = "0.1.0"
