"""cnncli: train, inspect, evaluate and export CNN image classifiers from YAML."""

__version__ = "0.1.0"
