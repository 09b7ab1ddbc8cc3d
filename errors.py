"""accelc's error hierarchy. A message is what the user reads: one line naming the problem
(file, node, op, shape, knob) and what to do about it. The CLI prints it and exits non-zero."""

from __future__ import annotations


class AccelcError(Exception):
    """Base of every error caused by the user's input rather than by a bug in accelc."""

    exit_code = 2

    def __str__(self) -> str:  # messages stay on one line, whatever the cause carried
        return " ".join(super().__str__().split())


class ModelError(AccelcError):
    """The model file is missing, unreadable, not ONNX, or invalid."""


class UnsupportedOpError(ModelError):
    """The model uses operators accelc cannot import; ``ops`` lists every one of them."""

    def __init__(self, ops: list[tuple[str, str, int]], source: str = "model"):
        self.ops = ops  # (op_type, node name, opset)
        listed = ", ".join(f"{op} (node '{name}', opset {opset})" for op, name, opset in ops)
        kinds = sorted({op for op, _, _ in ops})
        super().__init__(
            f"{source}: {len(ops)} node(s) use unsupported operators {', '.join(kinds)}: {listed}"
        )


class ShapeError(AccelcError):
    """An input dimension is dynamic and was not bound, or a given shape does not fit."""


class InputError(AccelcError):
    """A run-time feed is missing, unknown, or has the wrong shape, dtype or values."""


class ArtifactError(AccelcError):
    """An exported artifact is missing, corrupt, or built for another version or target."""


class TargetError(AccelcError):
    """An unknown target, or a target this machine cannot compile for or run."""


class PassError(AccelcError):
    """An unknown pass, or a pass option with a bad name or value."""


class CompileError(AccelcError):
    """TVM rejected the model while lowering it (the first line of TVM's error is kept)."""


class UsageError(AccelcError):
    """A bad command-line argument or file path (for example an output directory that is missing)."""
