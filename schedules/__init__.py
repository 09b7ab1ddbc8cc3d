"""TIR kernels, default schedule rules per target, and tuning."""
