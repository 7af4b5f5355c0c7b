"""`python -m showtell ...` (also what `torchrun -m showtell` runs)."""

from showtell.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
