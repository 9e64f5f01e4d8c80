"""`python -m compactobs`: the same CLI as the `compactobs` command."""

from compactobs.cli import main

if __name__ == "__main__":
    main(prog_name="compactobs")
