"""lordkit: LORD class/content disentanglement — training, export and torch-free transfer.

This module imports nothing heavy so that `import lordkit.runtime` works on machines without torch.
"""

__version__ = "0.1.0"
