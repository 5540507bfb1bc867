"""Spinal Cord Toolbox's deep-learning models, run in torch without TensorFlow or Keras.

SCT ships its MS lesion and centerline models as Keras 2 HDF5 files; sites that run SCT already hold them, and
their licence keeps them out of this package, so the node reads them from the site's SCT installation.
"""
