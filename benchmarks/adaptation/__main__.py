"""`python -m benchmarks.adaptation`; guarded, because the spawned workers import this module too."""

from benchmarks.adaptation.cli import main

if __name__ == "__main__":
    main()
