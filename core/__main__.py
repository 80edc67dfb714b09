"""``python -m diffsampler`` (also what ``torchrun -m diffsampler`` runs)."""

from diffsampler.cli import main

if __name__ == "__main__":
    main()
