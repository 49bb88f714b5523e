"""Training: the runtime (devices, precision, strategy), the loop, the run directory, the job."""
