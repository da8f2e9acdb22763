"""``python -m rastermatch``: the same command line as the ``rastermatch`` script."""

from rastermatch.cli import main

if __name__ == "__main__":  # also guards the re-import in spawned dask worker processes
    main(prog_name="rastermatch")
