"""tiny-llama: train a small Llama from scratch on a Mac, carry it to CUDA GPUs.

Every module is imported under this one name (`tinyllama.core.config`, `tinyllama.train`, ...), so an
install claims a single top-level name in site-packages. In a clone the entries of this folder are symlinks
to the folders and scripts at the repository root (core/, data/, train.py, ...), where the README's commands
run them; the wheel stores the files themselves. Static tools (IDEs, pyright, jedi) resolve the imports
through the symlinks.
"""

__version__ = "0.1.0"
