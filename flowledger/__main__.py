"""`python -m flowledger`: the `flowledger` command."""

from flowledger.cli.application import main

if __name__ == "__main__":
    main()
