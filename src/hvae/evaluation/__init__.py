"""Evaluation maths: bounds and IW likelihoods, anomaly scores and OOD metrics, posterior
features and linear probes.

No I/O and no MLflow: functions take a model and arrays and return numbers. May import
hvae.model and NumPy/TensorFlow only.
"""
