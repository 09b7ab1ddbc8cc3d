"""The simulated accelerator target: a parametric PE-array machine (config), its program
format (the ``accel`` MLIR dialect, defined with xDSL), and a functional + cycle + energy
simulator."""

from .config import MachineConfig, default_config_toml, load_config  # noqa: E402
from .cycles import gemm_compute_cycles, gemm_layer_cycles  # noqa: E402

__all__ = ["MachineConfig", "default_config_toml", "gemm_compute_cycles", "gemm_layer_cycles", "load_config"]
