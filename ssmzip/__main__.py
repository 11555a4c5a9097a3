"""``python -m ssmzip``: the command line."""
from .cli import main

if __name__ == "__main__":  # guard: worker processes (spawn) import this module
    main()
