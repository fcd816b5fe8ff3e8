"""Specialists (Hinton, Vinyals & Dean 2015, section 5): a generalist plus specialists on confusable classes.

* :mod:`~respkd.specialists.subsets`: which classes the generalist confuses (K-means on the class covariance or
  correlation of its predictions on held-out data).
* :mod:`~respkd.specialists.model`: a specialist's output layer (subset + dustbin), its batches (half subset, half
  the rest), the dustbin-logit correction and the generalist's soft targets mapped to subset + dustbin.
* :mod:`~respkd.specialists.context`: what the specialists of one config share (the generalist, its data), and
  whether a specialist is finished.
* :mod:`~respkd.specialists.train`: every specialist an independent process with its own run directory.
* :mod:`~respkd.specialists.combine`: the KL combination at inference.
* :mod:`~respkd.specialists.results`: generalist vs generalist + specialists on the test set.

Commands: ``respkd specialists subsets|train|eval|table`` (see README, "Specialists").
"""

__all__: list[str] = []  # nothing is imported here: the modules above are the interface
