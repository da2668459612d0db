"""`python -m tune`: the unambiguous form (torchtune also installs a `tune` script)."""

from tune.cli import main

if __name__ == "__main__":
    main()
