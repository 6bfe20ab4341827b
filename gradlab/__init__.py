"""gradlab: gradient-clipping ablation studies.

Import-light on purpose: `gradlab --help` must not pull in torch.
"""

__version__ = "0.1.0"
