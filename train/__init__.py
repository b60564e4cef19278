"""The training program: `python -m train --config configs/<name>.py --workdir DIR`."""
