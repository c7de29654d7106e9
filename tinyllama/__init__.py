"""tiny-llama: train a small Llama from scratch on a Mac, carry it to CUDA GPUs.

Every module is imported under this one name (`tinyllama.core.config`, `tinyllama.train`, ...), so an
install claims a single top-level name in site-packages. In a clone the code sits beside this folder
(core/, data/, train.py, ... at the repository root, where the commands in the README run it); in an
installed wheel it sits inside it. This file makes both layouts import the same way.
"""

from pathlib import Path

__version__ = "0.1.0"

_here = Path(__file__).resolve().parent
if not (_here / "core").is_dir():  # a clone: the packages and scripts are one level up
    __path__.append(str(_here.parent))
