"""Evaluation: pure functions of logits (and features) and labels, plus the model-level suites.

metrics (accuracy, NLL, the ECE family, Brier), calibration (temperature scaling), selective
(risk-coverage, AURC, OOD scores, ECE's bootstrap interval, debiased and smooth ECE), figures (the
per-run calibration figures), shift (corruption and OOD evaluation of a model through a predict
function) and corruptions (CIFAR-10-C). Nothing here imports the training loop.
"""
