"""The simulated accelerator target: a parametric PE-array machine (config), its program
format (the ``accel`` MLIR dialect, defined with xDSL), and a functional + cycle + energy
simulator."""
