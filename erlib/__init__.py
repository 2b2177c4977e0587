"""erlib: the entropy–reconstruction (ER) view of multi-view self-supervised learning.

Rodríguez-Gálvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised Learning", ICML 2023.
The mathematics lives in :mod:`erlib.bounds`; see README.md for the map of the repository.
"""

__version__ = "0.1.0"
