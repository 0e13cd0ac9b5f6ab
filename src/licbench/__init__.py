"""licbench: a reproducible pipeline for learned lossy image compression research."""

import warnings

# torch_geometric (imported by CompressAI) calls torch.jit.script at import
# time, and torch 2.14 deprecates it: every command would print it first.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                        module=r"torch\.jit\._script")

__version__ = "0.1.0"
