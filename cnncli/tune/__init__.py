"""Hyperparameter sweeps (`cnn tune`): the config's `search:` section run as an Optuna study.

space.py turns the section into Optuna suggestions and `--set` overrides;
sweep.py runs trials, each an ordinary run directory; study.py shares the
study between processes (the lock, the trial budget, dead trials); report.py
writes trials.csv, best.yaml and the pictures; progress.py shows the trials.
"""
