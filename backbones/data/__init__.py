"""Layer 5, data: image folders, the built-in digits, preprocessing transforms, distributed sampling.

One data layer serves fine-tuning, feature extraction and int8 calibration. Imports only the
layers below.
"""
