"""`python -m benchmarks.performance`."""

from benchmarks.performance.cli import main

if __name__ == "__main__":
    main()
